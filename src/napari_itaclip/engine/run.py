"""After the encoder: a run's kept image features -> logits (+ examples) -> refined result.

`ITACLIP.segment` fills a `Run` (its image, request, text features, resized image) and gets
`ImageFeatures` from its cache or the encoder; `finish_run` does the rest, for the preview
and for the final result alike. Everything here is cheap next to the encoder, so a re-run on
kept features costs the text (cached) and this.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .encoder import patch_size
from .examples import (
    ExamplesBank,
    ExamplesTerm,
    bank_settings,
    check_examples,
    example_keys,
    resize_nearest,
)
from .features import ImageFeatures, feature_key, stitched_logits
from .image import check_image_size, normalise, resize_short_side, to_rgb_uint8
from .postprocess import close_labels
from .precision import exact_fp32
from .presets import Preset
from .refine import refine
from .request import Request
from .result import Cancelled, SegmentationResult
from .windows import N_VIEWS


def checkpoint_for(cancel: Callable[[], bool] | None) -> Callable[[], None]:
    """checkpoint(): raises `Cancelled` when cancel() returns True."""

    def checkpoint() -> None:
        if cancel is not None and cancel():
            raise Cancelled("segmentation cancelled")

    return checkpoint


@dataclass
class Run:
    """One `segment` call's state between its stages."""

    rgb: np.ndarray
    request: Request
    factor: int
    # (H, W) int64 image examples, a bank's (keys, class ids) on the device, or None
    examples: np.ndarray | tuple[torch.Tensor, torch.Tensor] | None
    report: Callable[[int, int, str], None]
    checkpoint: Callable[[], None]
    start: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)
    text: torch.Tensor | None = None
    resized: np.ndarray | None = None
    normalised: torch.Tensor | None = None
    reused: bool = False


def image_example_keys(run: Run, features: ImageFeatures, params: Preset):
    """Keys and class ids under the run's image examples (engine.examples.example_keys)."""
    resized = resize_nearest(run.examples, run.resized.shape[:2])
    return example_keys(features, resized, params.c_img)


def _examples(run: Run, features: ImageFeatures, params: Preset):
    """(term for stitched_logits or None, vouched classes or None, run-record entry)."""
    if run.examples is None:
        return None, None, None
    n_classes = run.request.n_classes
    if isinstance(run.examples, tuple):
        keys, class_ids = run.examples
        vouched, record = None, {"source": "bank", "keys": len(keys)}
    else:
        keys, class_ids = image_example_keys(run, features, params)
        painted = run.examples >= 0
        vouched = np.zeros(n_classes, bool)
        vouched[np.unique(run.examples[painted])] = True
        record = {"source": "image", "pixels": int(painted.sum()), "keys": len(keys)}
    if not len(keys):
        return None, vouched, record
    query_class = run.request.class_list.query_class
    term = ExamplesTerm(keys, class_ids, query_class, n_classes, params).for_windows(features)
    return term, vouched, record


def finish_run(segmenter, run: Run, features: ImageFeatures, preview: bool = False):
    """The `SegmentationResult` of `run` from its image features (a preview's: the preview
    windows' original view, and no PAMR, which would cost seconds at the full size)."""
    params = run.request.params
    timings = dict(run.timings) if preview else run.timings
    if preview:
        params = replace(params, pamr_steps=0)
    with segmenter._timed(timings, "examples") if run.examples is not None else nullcontext():
        term, vouched, examples_record = _examples(run, features, params)
    views = N_VIEWS if params.image_engineering else 1
    with segmenter._timed(timings, "logits"):
        logits = stitched_logits(
            features,
            run.text,
            params.c_img,
            tuple(run.normalised.shape[-2:]),
            max(1, segmenter.batch_size // views),
            term,
        )
    with segmenter._timed(timings, "refine"):
        labels, probabilities = refine(
            run.normalised,
            logits,
            run.rgb.shape[:2],
            run.request.class_list,
            params,
            run.factor,
            band_memory_mb=segmenter.band_memory_mb,
            report=run.report,
            checkpoint=run.checkpoint,
            vouched=vouched,
        )
    if params.closing:
        with segmenter._timed(timings, "closing"):
            labels = close_labels(labels)
    if vouched is not None:  # image examples: the user's pixels stay as painted
        painted = run.examples >= 0
        labels[painted] = run.examples[painted]
    timings["total"] = time.perf_counter() - run.start
    record = segmenter.run_record(run.request, run.factor, run.rgb.shape[:2], run.resized.shape[:2])
    record["image_features"] = "reused" if run.reused else "computed"
    record["examples"] = examples_record
    record["preview"] = preview
    return SegmentationResult(
        labels=labels,
        probabilities=probabilities,
        class_names=run.request.class_names,
        background=run.request.class_list.background,
        parameters=record,
        timings=timings,
        probability_factor=run.factor,
    )


def checked_examples(segmenter, examples, shape, request: Request):
    """`segment`'s examples, checked before any model work: image examples as an int64
    array, a bank's (keys, class ids) on the device, or None."""
    if isinstance(examples, ExamplesBank):
        ids = examples.class_ids_for(request.class_names, segmenter.image_fingerprint)
        keys = torch.from_numpy(examples.keys).to(segmenter.device)
        return keys, torch.from_numpy(ids).to(segmenter.device)
    if examples is None:
        return None
    return check_examples(examples, shape, request.n_classes)


def image_features(segmenter, run: Run, preview=None) -> ImageFeatures:
    """The run's image resized, and its kept features or its encoder pass (then kept)."""
    params = run.request.params
    with segmenter._timed(run.timings, "resize"):
        run.resized = resize_short_side(run.rgb, params.short_side, params.max_long_side)
        run.normalised = normalise(run.resized)[0].to(segmenter.device)
    key = feature_key(
        run.resized, segmenter.model_identity, params, segmenter.precision, segmenter.device
    )
    features = segmenter.image_cache.get(key)
    run.reused = features is not None
    if run.reused:
        run.timings["encoder"] = 0.0
        return features
    with segmenter._timed(run.timings, "encoder"):
        features = segmenter.encode(run.normalised, params, run.report, run.checkpoint, preview)
    segmenter.image_cache.put(key, features)
    return features


def make_bank(segmenter, images, examples, request: Request, progress, cancel) -> ExamplesBank:
    """`ITACLIP.examples_bank`: every image and its examples checked first, then encoded."""
    if not isinstance(images, list | tuple):
        images, examples = [images], [examples]
    if len(images) != len(examples):
        raise ValueError(f"{len(images)} images but {len(examples)} examples arrays")
    runs = []
    for image, painted in zip(images, examples, strict=True):
        rgb = to_rgb_uint8(image)
        check_image_size(*rgb.shape[:2], request.params, max(patch_size(segmenter.model.visual)))
        checked = check_examples(painted, rgb.shape[:2], request.n_classes)
        report = progress or (lambda done, total, stage: None)
        runs.append(Run(rgb, request, 1, checked, report, checkpoint_for(cancel)))
    keys, class_ids = [], []
    with segmenter._run_lock, torch.inference_mode(), exact_fp32(segmenter.precision):
        for run in runs:
            features = image_features(segmenter, run)
            if run.examples is not None:
                image_keys, image_class_ids = image_example_keys(run, features, request.params)
                keys.append(image_keys.cpu())
                class_ids.append(image_class_ids.cpu())
    if not sum(len(k) for k in keys):
        raise ValueError("the examples hold no class id (all -1): nothing to make a bank of")
    return ExamplesBank(
        tuple(request.class_names),
        torch.cat(keys).numpy(),
        torch.cat(class_ids).numpy(),
        segmenter.image_fingerprint,
        bank_settings(request.params),
        images=len(keys),
    )

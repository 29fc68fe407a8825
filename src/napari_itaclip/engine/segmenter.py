"""`ITACLIP`: owns the model and the text cache, and composes the stages in order.

image -> uint8 RGB -> resize (short side S) -> normalise -> sliding windows x views through
the modified encoder, in memory-bounded chunks -> stitched logits -> per band of output rows:
bilinear upsampling to the original size, PAMR, query softmax, variant max -> area threshold
(a second pass, needing global counts) -> labels -> closing.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

from . import image as image_stage
from .cache_folders import cache_root
from .classes import ClassList
from .device_sync import synchronize
from .encoder import check_supported, pack_linear_weights, patch_size
from .examples import ExamplesBank
from .features import (
    DEFAULT_IMAGE_CACHE_MB,
    STORAGE_DTYPES,
    FeatureCache,
    ImageFeatures,
    encode_image,
    stitched_logits,
)
from .models import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    deprecated_loader_arguments,
    load_clip,
    run_settings,
)
from .precision import CAST_DTYPES, autocast, cast_model, exact_fp32
from .presets import Preset
from .refine import DEFAULT_BAND_MEMORY_MB
from .request import Request, prepare
from .result import SegmentationResult, package_version
from .run import Run, checked_examples, checkpoint_for, finish_run, image_features, make_bank
from .text import TextFeatureCache, fuse_aux_text, query_features, weights_fingerprint
from .window_encoding import encode_windows
from .windows import N_VIEWS

Progress = Callable[[int, int, str], None]


class ITACLIP:
    """Training-free open-vocabulary segmentation with CLIP (ITACLIP, CVPRW 2025).

    Built from its parts, as open_clip builds models: `ITACLIP.from_pretrained(model,
    pretrained, ...)` loads an open_clip model name and pretrained tag or a local weights
    file; `ITACLIP.from_open_clip(model)` wraps a CLIP you built; `ITACLIP(model, tokenizer,
    identity, ...)` takes a built open_clip CLIP, its tokenizer and the name of its weights
    (the run record's "model"). The model moves to its device once and stays there; text
    features are cached in memory and on disk. `segment` is the one entry point used by the
    napari widget, the notebook API and the command line.

    device: "auto" (cuda, then mps, then cpu), "cpu", "cuda", "cuda:N" or "mps".
    precision: "auto" (fp16 autocast on CUDA, fp32 elsewhere), "fp32", "fp16", "fp16-cast"
        (the authors' fp16 model: weights cast in place; not on the CPU) or "bf16"
        (engine.precision).
    batch_size: encoder images per chunk (default 128 on CUDA, 16 elsewhere). On GPU
        out-of-memory the chunk is halved for the rest of that run; every run starts again
        from batch_size.
    cache_dir: text-feature cache folder (default $NAPARI_ITACLIP_CACHE or the user cache);
        `False` keeps features in memory only.
    band_memory_mb: working memory of one band of the refinement stage (engine.refine).
    image_cache_mb: memory for the kept features of recent images (engine.features; 0 keeps
        none): a re-run on the same image with other classes, thresholds or examples needs
        no encoder pass. Kept on the compute device; `clear_cache()` frees it.

    Threads: `segment` calls on one segmenter take turns (a second caller waits for the first
    run to end), since runs share the model and the text cache; separate segmenters run side
    by side. On a multi-core CPU the encoder splits each chunk across as many worker threads
    as `torch.get_num_threads()` gave when the segmenter was built, one torch thread each; the
    calling thread's own torch thread count is never changed.

    Deprecated (until 0.3): `ITACLIP(model_name, pretrained, device, precision, quick_gelu=)`
    with a name or no model at all loads like `from_pretrained`, with a DeprecationWarning.
    """

    def __init__(
        self,
        model=None,
        tokenizer=None,
        identity: str | None = None,
        *deprecated_args,
        device="auto",
        precision="auto",
        batch_size: int | None = None,
        cache_dir=None,
        band_memory_mb: float = DEFAULT_BAND_MEMORY_MB,
        image_cache_mb: float = DEFAULT_IMAGE_CACHE_MB,
        **deprecated_kwargs,
    ):
        image_cache = FeatureCache(image_cache_mb)
        if model is None or isinstance(model, str | os.PathLike):
            warnings.warn(
                "ITACLIP(model_name, pretrained, ...) is deprecated and will be removed in 0.3;"
                " use ITACLIP.from_pretrained(model_name, pretrained, ...)",
                DeprecationWarning,
                stacklevel=2,
            )
            positional = [model, tokenizer, identity, *deprecated_args]
            while positional and positional[-1] is None:
                positional.pop()
            # device and precision were positional too: pass them on only when given
            given = {k: v for k, v in (("device", device), ("precision", precision)) if v != "auto"}
            name, pretrained, device, precision, quick_gelu = deprecated_loader_arguments(
                *positional, **given, **deprecated_kwargs
            )
            device, precision = run_settings(device, precision, batch_size, band_memory_mb)
            model, tokenizer, identity = load_clip(name, pretrained, quick_gelu)
        elif deprecated_args or deprecated_kwargs:
            unexpected = [repr(a) for a in deprecated_args] + list(deprecated_kwargs)
            raise TypeError(f"ITACLIP() got unexpected arguments: {', '.join(unexpected)}")
        if not hasattr(model, "visual"):
            raise TypeError(f"expected an open_clip CLIP model, got {type(model).__name__}")
        if tokenizer is None or identity is None:
            raise TypeError(
                "ITACLIP(model, tokenizer, identity) needs all three parts;"
                " ITACLIP.from_open_clip(model) fills in the tokenizer and identity"
            )
        check_supported(model.visual)
        device, precision = run_settings(device, precision, batch_size, band_memory_mb)
        # A cast model's is that of the weights as given: banks are shared with the uncast one.
        self._image_fingerprint = visual_fingerprint(model) if precision in CAST_DTYPES else None
        self.model = model.to(device).eval()
        cast_model(self.model, precision)
        if device.type == "cpu":
            pack_linear_weights(self.model.visual)
        self.tokenizer = tokenizer
        self.model_identity = identity
        self.device = device
        self.precision = precision
        self.batch_size = batch_size or (128 if device.type == "cuda" else 16)
        self.band_memory_mb = band_memory_mb
        # Taken once: a thread whose first torch call falls while another run's encoder
        # workers start reads 1.
        self._encoder_threads = torch.get_num_threads()
        # Re-entrant so that a progress or cancel callback may itself run a segmentation.
        self._run_lock = threading.RLock()
        self._cache_dir = cache_dir
        self._text_cache: TextFeatureCache | None = None
        self._image_cache = image_cache

    @classmethod
    def from_pretrained(
        cls,
        model: str = DEFAULT_MODEL,
        pretrained=DEFAULT_PRETRAINED,
        device="auto",
        precision="auto",
        *,
        quick_gelu: bool | None = None,
        batch_size: int | None = None,
        cache_dir=None,
        band_memory_mb: float = DEFAULT_BAND_MEMORY_MB,
        image_cache_mb: float = DEFAULT_IMAGE_CACHE_MB,
        progress: Progress | None = None,
    ) -> ITACLIP:
        """Load an open_clip model name and pretrained tag, or `pretrained` a local weights
        file (OpenAI .pt archive or state dict); see `models.load_clip`. OpenAI weights get
        QuickGELU unless `quick_gelu` says otherwise. progress(done_bytes, total_bytes,
        "download") is called while weights that are not cached yet download."""
        settings = {"batch_size": batch_size, "band_memory_mb": band_memory_mb}
        device, precision = run_settings(device, precision, **settings)
        FeatureCache(image_cache_mb)  # checked before the weights load
        parts = load_clip(model, pretrained, quick_gelu, progress=progress)
        return cls(
            *parts,
            device=device,
            precision=precision,
            cache_dir=cache_dir,
            image_cache_mb=image_cache_mb,
            **settings,
        )

    @classmethod
    def from_open_clip(
        cls,
        model,
        tokenizer=None,
        device="auto",
        precision="auto",
        *,
        batch_size: int | None = None,
        cache_dir=None,
        band_memory_mb: float = DEFAULT_BAND_MEMORY_MB,
        image_cache_mb: float = DEFAULT_IMAGE_CACHE_MB,
    ) -> ITACLIP:
        """Wrap an already-built open_clip CLIP (its weights are used as they are); the
        tokenizer defaults to open_clip's, at the model's context length."""
        if model is None or isinstance(model, str | os.PathLike):
            raise TypeError(
                f"from_open_clip takes a built open_clip CLIP, got {model!r};"
                " for a model name or weights file use ITACLIP.from_pretrained"
            )
        if tokenizer is None:
            import open_clip

            context_length = int(getattr(model, "context_length", 77))
            tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
        settings = {
            "batch_size": batch_size,
            "cache_dir": cache_dir,
            "band_memory_mb": band_memory_mb,
            "image_cache_mb": image_cache_mb,
        }
        identity = f"open_clip:{type(model).__name__}"
        return cls(model, tokenizer, identity, device=device, precision=precision, **settings)

    # ------------------------------------------------------------------ text
    @property
    def text_cache(self) -> TextFeatureCache:
        if self._text_cache is None:
            use_disk = self._cache_dir is not False
            root = None if self._cache_dir in (None, False) else self._cache_dir
            self._text_cache = TextFeatureCache.for_model(
                self.model,
                self.precision,
                self.device,
                Path(root) if root else cache_root(),
                use_disk,
            )
        return self._text_cache

    def text_features(
        self,
        class_list: ClassList,
        aux_texts: list[str] | None,
        c_def: float,
        progress: Progress | None = None,
        checkpoint: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """(queries, D) query features, fused with the auxiliary texts when given."""
        amp = autocast(self.device, self.precision)
        args = (self.model, self.tokenizer, self.text_cache)
        names = query_features(*args, class_list.queries, self.device, amp, progress, checkpoint)
        if not aux_texts or c_def == 0:
            return names
        aux = query_features(*args, aux_texts, self.device, amp, progress, checkpoint)
        return fuse_aux_text(names, aux, class_list.query_class, class_list.background, c_def)

    # --------------------------------------------------------------- segment
    def segment(
        self,
        image,
        classes=None,
        *,
        request: Request | None = None,
        progress: Progress | None = None,
        cancel: Callable[[], bool] | None = None,
        examples=None,
        preview: Callable[[SegmentationResult], None] | None = None,
        **options,
    ) -> SegmentationResult:
        """Segment `image` into the classes of a request.

        image: numpy (H, W), (H, W, 3) or (H, W, 4); see `image.to_rgb_uint8` for dtypes.
        request: a `Request` from `prepare` (it may also be given as `classes`). Without one,
            `classes` and `options` (preset, aux_text, probability_downsample,
            probability_budget_mb and any `PARAMETERS` name) are passed to `prepare` first.
        progress: called as progress(done, total, stage) per text batch, encoder chunk and band.
        cancel: polled between text batches, encoder chunks, bands and PAMR steps; returning
            True raises `Cancelled`.
        examples: an (H, W) integer array, a class id where the user vouches for that class
            and -1 elsewhere (all -1: none), or an `ExamplesBank` (default: the request's
            bank); docs/method.md §10.3. Where given, the returned labels equal them.
        preview: preview(result) with a coarse result first (docs/method.md §10.2; not when
            the features are kept). A cancel after it raises `Cancelled`; the preview stays.
        """
        start = time.perf_counter()
        if isinstance(classes, Request):
            classes, request = None, classes
        if request is None:
            if classes is None:
                raise TypeError("segment() needs classes (or a request from prepare())")
            request = prepare(classes, **options)
        elif classes is not None or options:
            raise TypeError("give segment() either a request or classes and options, not both")
        params = request.params
        rgb = image_stage.to_rgb_uint8(image)
        image_stage.check_image_size(*rgb.shape[:2], params, max(patch_size(self.model.visual)))
        run = Run(
            rgb=rgb,
            request=request,
            factor=request.probability_factor(*rgb.shape[:2]),
            examples=checked_examples(
                self, request.examples if examples is None else examples, rgb.shape[:2], request
            ),
            report=progress or (lambda done, total, stage: None),
            checkpoint=checkpoint_for(cancel),
            start=start,
        )
        run.checkpoint()
        with self._run_lock, torch.inference_mode(), exact_fp32(self.precision):
            with self._timed(run.timings, "text"):
                run.text = self.text_features(
                    request.class_list, request.aux_texts, params.c_def, run.report, run.checkpoint
                )

            def show_preview(features: ImageFeatures) -> None:
                preview(finish_run(self, run, features, preview=True))

            features = image_features(self, run, show_preview if preview else None)
            return finish_run(self, run, features)

    def encode(
        self,
        normalised: torch.Tensor,
        params: Preset,
        report: Progress,
        checkpoint: Callable[[], None],
        preview: Callable[[ImageFeatures], None] | None = None,
    ) -> ImageFeatures:
        """`ImageFeatures` of the (3, h, w) resized image (engine.features.encode_image)."""

        def encode(windows, views, sink, stage, done_before, total):
            encode_windows(
                self.model.visual,
                normalised,
                windows,
                views,
                sink,
                precision=self.precision,
                batch_size=self.batch_size,
                threads=self._encoder_threads,
                report=lambda done: report(done_before + done, total, stage),
                checkpoint=checkpoint,
            )

        dtype = STORAGE_DTYPES[self.precision]
        patch = patch_size(self.model.visual)
        return encode_image(encode, normalised, params, dtype, patch, preview)

    def clear_cache(self) -> None:
        """Forget the kept image features (text features stay cached)."""
        with self._run_lock:
            self._image_cache.clear()

    @property
    def image_cache(self) -> FeatureCache:  # len() and nbytes of the kept features
        return self._image_cache

    @property
    def image_fingerprint(self) -> str:
        """A hash of every image-tower tensor: what an `ExamplesBank` records as its model."""
        self._image_fingerprint = self._image_fingerprint or visual_fingerprint(self.model)
        return self._image_fingerprint

    def examples_bank(
        self, images, examples, request: Request, progress=None, cancel=None
    ) -> ExamplesBank:
        """An `ExamplesBank` from annotated images: for each image (a list, or one image) its
        (H, W) examples (class ids of `request`, -1 elsewhere). Features come from the kept
        ones when there are any (and are kept). progress and cancel as in `segment`."""
        return make_bank(self, images, examples, request, progress, cancel)

    def run_record(self, request: Request, factor: int, image_shape, resized_shape) -> dict:
        """Everything a result was made with (JSON-ready): the one place it is built."""
        return {
            **request.record(),
            "probability_downsample": factor,
            "probability_budget_mb": request.record_budget(),
            "model": self.model_identity,
            "device": str(self.device),
            "precision": self.precision,
            "image_shape": [int(s) for s in image_shape],
            "resized_shape": [int(s) for s in resized_shape],
            "napari_itaclip_version": package_version(),
        }

    @contextmanager
    def _timed(self, timings: dict[str, float], stage: str):
        """Add a stage's wall time to `timings`, once the device has finished it (CUDA and
        MPS run kernels asynchronously: without the wait the time lands in a later stage)."""
        tick = time.perf_counter()
        yield
        synchronize(self.device)
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - tick

    # --------------------------------------------------------------- encoder
    def window_logits(
        self,
        normalised: torch.Tensor,
        text: torch.Tensor,
        params: Preset,
        report: Progress,
        checkpoint: Callable[[], None],
    ) -> torch.Tensor:
        """(Q, h, w) stitched, count-averaged window logits at the resized size (an encoder
        pass; nothing kept)."""
        features = self.encode(normalised, params, report, checkpoint)
        views = N_VIEWS if params.image_engineering else 1
        chunk = max(1, self.batch_size // views)
        return stitched_logits(features, text, params.c_img, tuple(normalised.shape[-2:]), chunk)


def visual_fingerprint(model) -> str:
    return weights_fingerprint(model, lambda name: name.startswith("visual."))

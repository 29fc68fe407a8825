"""Batch segmentation of image files: `segment_files`, the one loop behind `napari-itaclip
segment` (and anything else that segments a list of files, such as a cluster job).

Every image goes through `planes.segment_planes`, as in the dock widget: a 2D image gives
the engine's result, a stack ((Z, Y, X), (T, Z, Y, X, 3), ...) one stacked result. Per image
it writes, under the output folder and the image's sub-folder (see `io.find_images`):

- `NAME_labels.png`: palette PNG of class ids ("png"); a TIFF instead for a stack or for more
  than `io.PNG_MAX_CLASSES` classes, which a PNG cannot hold;
- `NAME_labels.tif`: TIFF of class ids, (*stack, H, W) ("tif");
- `NAME.itaclip`: the result bundle ("bundle");
- `NAME_overlay.png`: the image with its classes blended in; for a stack, its middle plane.

An output that exists is kept unless `overwrite`; an image is complete when all its outputs
exist, and then skipped without being read; an image with some outputs missing is segmented
again and only the missing ones are written. Files are written atomically (`io.replacing`),
so an interrupted run never leaves a truncated output. A failing image is reported and
skipped; KeyboardInterrupt stops the batch.

Given a `distributed.Client`, `segment_files` runs the same per-image function
(`segment_image`) on the cluster's workers (`cluster.py`); nothing of dask is imported
otherwise.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .io import (
    PNG_MAX_CLASSES,
    ImageFile,
    check_output_folder,
    read_image,
    replacing,
    stored_shape,
    write_label_png,
    write_label_tiff,
    write_overlay,
)
from .planes import LayerPlanes, segment_planes

OUTPUT_FORMATS = ("png", "tif", "bundle")
DEFAULT_FORMATS = ("png", "bundle")


def describe_error(exc: BaseException) -> str:
    """One line for an exception; the engine's own errors already read as sentences."""
    if isinstance(exc, (ValueError, TypeError, OSError)):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


class BatchProgress:
    """What `segment_files` reports while it runs. Every method does nothing here: subclass
    and override what you show (the command line draws progress bars)."""

    def start(self, name: str) -> None:
        """An image begins."""

    def engine(self, done: int, total: int, stage: str) -> None:
        """The engine's progress(done, total, stage) within the current image."""

    def note(self, message: str) -> None:
        """Something worth knowing that is no error (said once per batch)."""

    def failure(self, path: Path, exc: Exception) -> None:
        """The image at `path` failed with `exc` (its traceback attached; from a cluster
        worker, the worker's)."""

    def image_done(self) -> None:
        """The current image is finished: written, skipped or failed."""


@dataclass
class BatchReport:
    """What `segment_files` did. failed: image -> the one-line reason."""

    out: Path
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: dict[Path, str] = field(default_factory=dict)


class ImageOutcome(NamedTuple):
    """What happened to one image: status "written", "skipped" or "failed" (with `error`);
    `planes`: its number of stack planes (1 for a 2D image)."""

    path: Path
    status: str
    planes: int = 1
    error: Exception | None = None


class Reporting:
    """Turns `ImageOutcome`s into the `BatchReport` and the progress calls, for the
    in-process loop and the cluster alike."""

    def __init__(self, out: Path, formats: tuple[str, ...], progress: BatchProgress):
        self.report = BatchReport(out)
        self.progress = progress
        self._note_stacks = "png" in formats

    def record(self, outcome: ImageOutcome) -> None:
        path = outcome.path
        if outcome.status == "failed":
            self.report.failed[path] = describe_error(outcome.error)
            self.progress.failure(path, outcome.error)
        elif outcome.status == "skipped":
            self.report.skipped.append(path)
        else:
            self.report.written.append(path)
            if outcome.planes > 1 and self._note_stacks:
                self._note_stacks = False  # once per batch
                self.progress.note(
                    f"{path.name} is a stack of {outcome.planes} planes: label images of "
                    "stacks are TIFFs (a PNG holds one plane)"
                )
        self.progress.image_done()


@dataclass(frozen=True)
class SegmenterSpec:
    """How to load a segmenter (`ITACLIP.from_pretrained`'s arguments): what every worker of
    a cluster loads once, and what the command line loads in-process.

    pretrained: an open_clip tag or a weights file that every worker can read.
    """

    model: str = "ViT-B-16"
    pretrained: str = "openai"
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "pretrained", os.fspath(self.pretrained))

    def load(self):
        from .engine import ITACLIP

        return ITACLIP.from_pretrained(
            self.model, self.pretrained, self.device, self.precision, batch_size=self.batch_size
        )


def stack_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The stack axes' sizes of an image of this shape, as `LayerPlanes.from_array` sees it
    (empty for one plane); the array is a zero-byte stand-in."""
    return LayerPlanes.from_array(np.broadcast_to(np.uint8(0), shape)).stack_shape


def planned_outputs(
    stem: Path, formats: Iterable[str], n_classes: int, overlay: bool, stack: bool = False
) -> dict[str, Path]:
    """{kind: path} of the files written for one image (`stem` = out folder / image stem)."""
    from .bundle import SUFFIX

    formats = set(formats)
    outputs = {}
    if "png" in formats:
        kind = "png" if n_classes <= PNG_MAX_CLASSES and not stack else "tif"
        outputs[kind] = stem.with_name(f"{stem.name}_labels.{kind}")
    if "tif" in formats:
        outputs["tif"] = stem.with_name(f"{stem.name}_labels.tif")
    if "bundle" in formats:
        outputs["bundle"] = stem.with_name(stem.name + SUFFIX)
    if overlay:
        outputs["overlay"] = stem.with_name(f"{stem.name}_overlay.png")
    return outputs


def write_outputs(outputs: dict[str, Path], result, planes: LayerPlanes, source_name: str):
    """Write `result` (of `planes`, from `segment_planes`) to the `planned_outputs`."""
    from .bundle import save_bundle

    def write_overlay_of_middle_plane(path):
        indices = planes.indices()
        index = indices[len(indices) // 2]
        write_overlay(path, planes.read(index), result.labels[index], result)

    writers = {
        "png": lambda path: write_label_png(path, result),
        "tif": lambda path: write_label_tiff(path, result),
        "bundle": lambda path: save_bundle(path, result, name=source_name),
        "overlay": write_overlay_of_middle_plane,
    }
    for kind, path in outputs.items():
        with replacing(path) as temporary:
            writers[kind](temporary)


def _image_files(images) -> list[ImageFile]:
    """`segment_files`' images as `ImageFile`s: a bare path's outputs go to the top folder."""
    return [
        ImageFile(Path(item[0]), Path(item[1]))
        if isinstance(item, tuple)
        else ImageFile(Path(item))
        for item in images
    ]


class ImageJob(NamedTuple):
    """One image to segment and the output stem (out folder / sub-folder / image stem) of its
    files; `error` when it cannot be done (its outputs would overwrite another image's)."""

    path: Path
    stem: Path
    error: Exception | None = None


def image_jobs(images, out: Path) -> Iterator[ImageJob]:
    """The jobs of `segment_files`' images, in order, refusing a second image whose outputs
    would overwrite those of the first."""
    used: dict[Path, Path] = {}  # output stem -> the image that has it
    for path, folder in _image_files(images):
        stem = out / folder / path.stem
        error = None
        if stem in used:
            error = ValueError(f"its outputs would overwrite those of {used[stem]}")
        else:
            used[stem] = path
        yield ImageJob(path, stem, error)


def missing_outputs(
    job: ImageJob, request, formats, overlay: bool, overwrite: bool
) -> tuple[dict[str, Path], tuple[int, ...]]:
    """The outputs of `job` to write (all with `overwrite`, else those that do not exist)
    and the image's stack shape, from a TIFF's header (no pixels are read)."""
    shape = stored_shape(job.path)
    stack = () if shape is None else stack_shape(shape)
    outputs = planned_outputs(job.stem, formats, request.n_classes, overlay, bool(stack))
    if not overwrite:
        outputs = {kind: p for kind, p in outputs.items() if not p.exists()}
    return outputs, stack


def segment_image(
    job: ImageJob,
    request,
    *,
    load_segmenter: Callable[[], object],
    formats: tuple[str, ...],
    overlay: bool,
    overwrite: bool,
    progress=None,
) -> ImageOutcome:
    """Segment one image and write its missing outputs: what `segment_files` does per image,
    in-process or on a cluster worker. A failure is returned (not raised); KeyboardInterrupt
    is not caught.

    load_segmenter: returns the `ITACLIP`; called only when the image is not complete.
    progress: the engine's progress(done, total, stage).
    """
    try:
        if job.error is not None:
            raise job.error
        outputs, stack = missing_outputs(job, request, formats, overlay, overwrite)
        if not outputs:
            return ImageOutcome(job.path, "skipped")
        planes = LayerPlanes.from_array(read_image(job.path), name=job.path.name)
        result = segment_planes(load_segmenter(), planes, request, progress=progress)
        write_outputs(outputs, result, planes, job.path.name)
        return ImageOutcome(job.path, "written", math.prod(stack))
    except Exception as exc:
        return ImageOutcome(job.path, "failed", error=exc)


def segment_files(
    images,
    request,
    out,
    *,
    segmenter,
    formats: Iterable[str] = DEFAULT_FORMATS,
    overlay: bool = True,
    overwrite: bool = False,
    progress: BatchProgress | None = None,
    client=None,
    images_per_task: int | None = None,
) -> BatchReport:
    """Segment image files with one loaded segmenter and write their outputs under `out`.

    images: paths, or `io.ImageFile`s / (path, sub-folder) pairs as `io.find_images` returns
        (outputs go to `out / sub-folder`).
    request: an engine `Request` (`napari_itaclip.engine.prepare`), checked once for all.
    segmenter: an `ITACLIP` (e.g. `ITACLIP.from_pretrained(...)`), or a `SegmenterSpec`
        (loaded when the first image needs it; with a client, each worker loads it once).
    formats: any of OUTPUT_FORMATS; overlay: also write the overlay PNG.
    overwrite: replace existing outputs (else they are kept and complete images skipped).
    progress: a `BatchProgress` to follow the run.
    client: a `distributed.Client`: run on its cluster (see `cluster.segment_on_cluster`;
        `segmenter` must then be a `SegmenterSpec`). images_per_task: images per cluster
        task (default: from the number of images and workers).
    Raises ValueError before any image if `out` cannot be a folder or a format is unknown;
    a failing image is recorded in the report and the batch goes on.

        from napari_itaclip.batch import segment_files
        from napari_itaclip.engine import ITACLIP, prepare
        from napari_itaclip.io import find_images

        request = prepare("background; cat; dog", preset="fast")
        images, missing = find_images(["photos/"])
        report = segment_files(images, request, "results", segmenter=ITACLIP.from_pretrained())
    """
    out = Path(out)
    formats = tuple(formats)
    unknown = sorted(set(formats) - set(OUTPUT_FORMATS))
    if unknown:
        raise ValueError(f"unknown output formats {unknown}; choose from {list(OUTPUT_FORMATS)}")
    check_output_folder(out)
    reporting = Reporting(out, formats, progress or BatchProgress())
    options = {"formats": formats, "overlay": overlay, "overwrite": overwrite}
    if client is not None:
        from .cluster import segment_on_cluster

        if not isinstance(segmenter, SegmenterSpec):
            raise TypeError(
                "on a cluster each worker loads its own segmenter: give segmenter="
                f"SegmenterSpec(model, pretrained, ...), not {type(segmenter).__name__}"
            )
        segment_on_cluster(
            client,
            list(image_jobs(images, out)),
            request,
            segmenter,
            reporting,
            options,
            images_per_task=images_per_task,
        )
        return reporting.report
    # Loaded when the first image needs it: a run whose images are all complete loads nothing.
    load = functools.cache(
        segmenter.load if isinstance(segmenter, SegmenterSpec) else lambda: segmenter
    )
    for job in image_jobs(images, out):
        reporting.progress.start(job.path.name)
        outcome = segment_image(
            job, request, load_segmenter=load, progress=reporting.progress.engine, **options
        )
        reporting.record(outcome)
    return reporting.report

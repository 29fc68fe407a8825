"""Batch segmentation of image files: `segment_files`, the one loop behind `napari-itaclip
segment` (and anything else that segments a list of files, such as a cluster job).

Every image goes through `planes.segment_planes`, as in the dock widget: a 2D image gives
the engine's result, a stack ((Z, Y, X), (T, Z, Y, X, 3), ...) one stacked result. Per image
it writes, under the output folder and the image's sub-folder (see `io.find_images`):

- `NAME_labels.png`: palette PNG of class ids ("png"); a TIFF instead for a stack or for more
  than `io.PNG_MAX_CLASSES` classes, which a PNG cannot hold;
- `NAME_labels.tif`: TIFF of class ids, (*stack, H, W) ("tif");
- `NAME.itaclip`: the result bundle ("bundle");
- `NAME_labels.zarr`: zarr array of class ids, (*stack, H, W) ("zarr", `label_store.py`);
- `NAME_overlay.png`: the image with its classes blended in; for a stack, its middle plane.

An output that exists is kept unless `overwrite`; an image is complete when all its outputs
exist, and then skipped without being read; an image with some outputs missing is segmented
again and only the missing ones are written. Files are written atomically (`io.replacing`),
so an interrupted run never leaves a truncated output. A failing image is reported and
skipped; KeyboardInterrupt stops the batch.

The label TIFF and the bundle hold a stack whole in memory. When only the zarr store and the
overlay are missing, the planes are segmented one at a time and each is written into the
store as it comes (a store left partial by an interrupted run is resumed: its written planes
are not segmented again), and the overlay's plane is read back from the store; with neither
a store nor an assembled output, only the overlay's plane is segmented.

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

from . import label_store
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
from .label_store import LabelStore
from .labels import label_id_dtype
from .planes import LayerPlanes, plane_request, plane_results, segment_planes

OUTPUT_FORMATS = ("png", "tif", "bundle", "zarr")
DEFAULT_FORMATS = ("png", "bundle")
# Outputs written from one plane's labels at a time: an image that needs only these is never
# held whole in memory.
STREAMED_OUTPUTS = frozenset({"zarr", "overlay"})
# Outputs of a stack made from its whole stacked result, held in memory (a stack's "png" is a
# "tif").
ASSEMBLED_OUTPUTS = frozenset({"tif", "bundle"})
# Above this size of a stack's labels, a note recommends the zarr format over TIFF and bundle.
BIG_STACK_BYTES = 2 * 2**30


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

    def __init__(
        self, out: Path, formats: tuple[str, ...], n_classes: int, progress: BatchProgress
    ):
        self.report = BatchReport(out)
        self.progress = progress
        self._note_stacks = "png" in formats
        self._note_big_stacks = True
        self._label_bytes = label_id_dtype(n_classes, background=True).itemsize

    def planned(self, path: Path, outputs: dict[str, Path], layout) -> None:
        """An image is about to be segmented for `outputs` (`layout`: its `stored_layout`):
        a stack too big to hold whole gets a note recommending zarr, once per batch."""
        if not (self._note_big_stacks and layout is not None and layout.stack_shape):
            return
        assembled = sorted(ASSEMBLED_OUTPUTS & set(outputs))
        size = math.prod(layout.stack_shape) * math.prod(layout.plane_shape) * self._label_bytes
        if assembled and size > BIG_STACK_BYTES:
            self._note_big_stacks = False
            self.progress.note(
                f"{path.name}: its labels are {size / 2**30:.1f} GiB, held whole in memory for "
                f"the {' and '.join(assembled)} output; --format zarr (alone) writes big stacks "
                "plane by plane"
            )

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


def layout_of(shape: tuple[int, ...], name: str = "image") -> LayerPlanes:
    """The planes of an image of this shape, as `LayerPlanes.from_array` sees them, on a
    zero-byte stand-in array (for their shapes only)."""
    return LayerPlanes.from_array(np.broadcast_to(np.uint8(0), shape), name=name)


def stack_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The stack axes' sizes of an image of this shape (empty for one plane)."""
    return layout_of(shape).stack_shape


def stored_layout(path: Path) -> LayerPlanes | None:
    """The planes of the image file at `path` (`layout_of`) from its header, no pixels read;
    None for a format without one (a single plane)."""
    shape = stored_shape(path)
    return None if shape is None else layout_of(shape, Path(path).name)


def label_store_path(stem: Path) -> Path:
    """The zarr label store of the image with this output stem."""
    return stem.with_name(stem.name + label_store.SUFFIX)


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
    if "zarr" in formats:
        outputs["zarr"] = label_store_path(stem)
    if overlay:
        outputs["overlay"] = stem.with_name(f"{stem.name}_overlay.png")
    return outputs


def middle_plane(planes: LayerPlanes) -> tuple[int, ...]:
    """The stack index of the plane an overlay shows (the middle one in stack order)."""
    indices = planes.indices()
    return indices[len(indices) // 2]


def label_store_of(path: Path, planes: LayerPlanes) -> LabelStore:
    """The zarr label store at `path` of an image of these planes."""
    return LabelStore(path, planes.stack_shape, planes.plane_shape)


def open_label_store(path: Path, planes: LayerPlanes, request, *, restart: bool) -> LabelStore:
    """The zarr label store `path` of `planes`, ready for writing (resumed unless `restart`)."""
    return label_store_of(path, planes).open(
        request.class_names, request.class_list.background, request.record(), restart=restart
    )


def write_outputs(outputs: dict[str, Path], result, planes: LayerPlanes, source_name: str, request):
    """Write `result` (of `planes`, from `segment_planes` with `request`) to the
    `planned_outputs`."""
    from .bundle import save_bundle

    def write_overlay_of_middle_plane(path):
        index = middle_plane(planes)
        labels = result.labels[index]
        write_overlay(path, planes.read(index), labels, result.n_classes, result.background)

    writers = {
        "png": lambda path: write_label_png(path, result),
        "tif": lambda path: write_label_tiff(path, result),
        "bundle": lambda path: save_bundle(path, result, name=source_name),
        "overlay": write_overlay_of_middle_plane,
    }
    for kind, path in outputs.items():
        if kind == "zarr":  # a folder, made atomic by the store itself
            store = open_label_store(path, planes, request, restart=True)
            for index in store.indices():
                store.write(index, result.labels[index])
            store.finish()
            continue
        with replacing(path) as temporary:
            writers[kind](temporary)


def streams(outputs: dict[str, Path]) -> bool:
    """Whether `outputs` are written plane by plane (`write_planes`, `finish_streamed`)."""
    return set(outputs) <= STREAMED_OUTPUTS


def write_planes(
    store: LabelStore, planes: LayerPlanes, request, segmenter, indices, progress=None
):
    """Segment the planes at `indices` one at a time, each written into `store` as it comes."""
    for index, result in plane_results(
        segmenter, planes, plane_request(planes, request), indices, progress=progress
    ):
        store.write(index, result.labels)


def finish_streamed(
    outputs: dict[str, Path],
    planes: LayerPlanes,
    request,
    zarr_path: Path | None,
    load_segmenter: Callable[[], object],
    progress=None,
) -> None:
    """Once every plane is in the zarr store `zarr_path` (None when "zarr" is not asked for):
    give it its final name, then write the overlay of the middle plane from the store (with no
    store, that plane alone is segmented)."""
    if "zarr" in outputs:
        label_store_of(zarr_path, planes).finish()
    if "overlay" not in outputs:
        return
    index = middle_plane(planes)
    if zarr_path is not None:
        labels = label_store_of(zarr_path, planes).read(index)
    else:
        as_in_the_stack = plane_request(planes, request)
        [(_, result)] = plane_results(
            load_segmenter(), planes, as_in_the_stack, [index], progress=progress
        )
        labels = result.labels
    with replacing(outputs["overlay"]) as temporary:
        write_overlay(
            temporary, planes.read(index), labels, request.n_classes, request.class_list.background
        )


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


def read_planes(job: ImageJob) -> LayerPlanes:
    """The planes of `job`'s image, read as they are segmented (a TIFF or zarr stack is
    never read whole)."""
    return LayerPlanes.from_array(read_image(job.path, lazy=True), name=job.path.name)


def missing_outputs(
    job: ImageJob, request, formats, overlay: bool, overwrite: bool
) -> tuple[dict[str, Path], LayerPlanes | None]:
    """The outputs of `job` to write (all with `overwrite`, else those that do not exist)
    and the image's `stored_layout`, from a TIFF's or zarr's header (no pixels are read)."""
    layout = stored_layout(job.path)
    stack = bool(layout is not None and layout.stack_shape)
    outputs = planned_outputs(job.stem, formats, request.n_classes, overlay, stack)
    if "zarr" in formats:
        label_store.remove_leftover_partial(label_store_path(job.stem))
    if not overwrite:
        outputs = {kind: p for kind, p in outputs.items() if not p.exists()}
    return outputs, layout


def zarr_output(job: ImageJob, formats) -> Path | None:
    """The zarr label store of `job`, when "zarr" is one of `formats`."""
    return label_store_path(job.stem) if "zarr" in formats else None


def segment_image(
    job: ImageJob,
    request,
    *,
    load_segmenter: Callable[[], object],
    formats: tuple[str, ...],
    overlay: bool,
    overwrite: bool,
    progress=None,
    planned: Callable[[Path, dict, LayerPlanes | None], None] | None = None,
) -> ImageOutcome:
    """Segment one image and write its missing outputs: what `segment_files` does per image,
    in-process or on a cluster worker. A failure is returned (not raised); KeyboardInterrupt
    is not caught.

    load_segmenter: returns the `ITACLIP`; called only when the image is not complete.
    progress: the engine's progress(done, total, stage).
    planned: told (path, outputs, stored layout) before the image is segmented.
    """
    try:
        if job.error is not None:
            raise job.error
        outputs, layout = missing_outputs(job, request, formats, overlay, overwrite)
        if not outputs:
            return ImageOutcome(job.path, "skipped")
        if planned is not None:
            planned(job.path, outputs, layout)
        planes = read_planes(job)
        if streams(outputs):
            zarr_path = zarr_output(job, formats)
            if "zarr" in outputs:
                store = open_label_store(zarr_path, planes, request, restart=overwrite)
                write_planes(store, planes, request, load_segmenter(), store.missing(), progress)
            finish_streamed(outputs, planes, request, zarr_path, load_segmenter, progress)
        else:
            result = segment_planes(load_segmenter(), planes, request, progress=progress)
            write_outputs(outputs, result, planes, job.path.name, request)
        return ImageOutcome(job.path, "written", math.prod(planes.stack_shape))
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
    if "zarr" in formats:
        label_store.check_zarr_installed()
    check_output_folder(out)
    reporting = Reporting(out, formats, request.n_classes, progress or BatchProgress())
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
            job,
            request,
            load_segmenter=load,
            progress=reporting.progress.engine,
            planned=reporting.planned,
            **options,
        )
        reporting.record(outcome)
    return reporting.report

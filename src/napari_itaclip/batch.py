"""Batch segmentation of image files: `segment_files`, the one loop behind `napari-itaclip
segment` (and anything else that segments a list of files, such as a cluster job).

Every image goes through `planes.segment_planes`, as in the dock widget: a 2D image gives
the engine's result, a stack ((Z, Y, X), (T, Z, Y, X, 3), ...) one stacked result. Per image
it writes, under the output folder and the image's sub-folder (see `io.find_images`):

- `NAME_labels.png`: palette PNG of class ids ("png"); a TIFF instead for a stack or for more
  than `io.PNG_MAX_CLASSES` classes, which a PNG cannot hold;
- `NAME_labels.tif`: TIFF of class ids, (*stack, H, W) ("tif");
- `NAME.itaclip.npz`: the result bundle ("bundle");
- `NAME_overlay.png`: the image with its classes blended in; for a stack, its middle plane.

An output that exists is kept unless `overwrite`; an image whose outputs all exist is
skipped without being read. Files are written atomically (`io.replacing`). A failing image
is reported and skipped; KeyboardInterrupt stops the batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

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
        """The current image failed with `exc` (called inside the `except` block)."""

    def image_done(self) -> None:
        """The current image is finished: written, skipped or failed."""


@dataclass
class BatchReport:
    """What `segment_files` did. failed: image -> the one-line reason."""

    out: Path
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: dict[Path, str] = field(default_factory=dict)


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
) -> BatchReport:
    """Segment image files with one loaded segmenter and write their outputs under `out`.

    images: paths, or `io.ImageFile`s / (path, sub-folder) pairs as `io.find_images` returns
        (outputs go to `out / sub-folder`).
    request: an engine `Request` (`napari_itaclip.engine.prepare`), checked once for all.
    segmenter: an `ITACLIP` (e.g. `ITACLIP.from_pretrained(...)`).
    formats: any of OUTPUT_FORMATS; overlay: also write the overlay PNG.
    overwrite: replace existing outputs (else they are kept and complete images skipped).
    progress: a `BatchProgress` to follow the run.
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
    progress = progress or BatchProgress()
    report = BatchReport(out)
    used: dict[Path, Path] = {}  # output stem -> the image that has it
    noted_stack = False
    for path, folder in _image_files(images):
        progress.start(path.name)
        try:
            stem = out / folder / path.stem
            if stem in used:
                raise ValueError(f"its outputs would overwrite those of {used[stem]}")
            used[stem] = path
            shape = stored_shape(path)
            stack = () if shape is None else stack_shape(shape)
            outputs = planned_outputs(stem, formats, request.n_classes, overlay, bool(stack))
            if not overwrite:
                outputs = {kind: p for kind, p in outputs.items() if not p.exists()}
            if not outputs:
                report.skipped.append(path)
                continue
            if stack and "png" in formats and not noted_stack:
                noted_stack = True
                progress.note(
                    f"{path.name} is a stack of {math.prod(stack)} planes: label images of "
                    "stacks are TIFFs (a PNG holds one plane)"
                )
            planes = LayerPlanes.from_array(read_image(path), name=path.name)
            result = segment_planes(segmenter, planes, request, progress=progress.engine)
            write_outputs(outputs, result, planes, path.name)
            report.written.append(path)
        except Exception as exc:
            report.failed[path] = describe_error(exc)
            progress.failure(path, exc)
        finally:
            progress.image_done()
    return report

"""Image files in, label files out: what the command line and `batch.segment_files` read and
write. numpy only at import (tifffile, OpenCV and Pillow load when a file is read or written);
no torch, no napari.

- Readers: `read_image` (pixels as stored, any number of planes; a zarr or OME-Zarr store
  is read lazily, plane by plane), `stored_shape` (a TIFF's or zarr's shape from its header),
  `read_label_image` (ground truth: class ids, never colours).
- Finding files: `find_images` (inputs for `segment`), `index_files` (ids for `evaluate`).
- Writers: `write_label_png`, `write_label_tiff` (class ids, class names inside:
  `label_metadata`), `write_overlay` (the zarr label store is `label_store.py`); `replacing`
  makes every write atomic; `check_output_folder` and `check_output_file` refuse an output
  that cannot be written before any work starts.
"""

from __future__ import annotations

import importlib.util
import json
import os
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .labels import class_palette, painted_classes  # napari's colour per class

# Files a folder scan picks up when no pattern is given (explicit file arguments are always read).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
TIFF_EXTENSIONS = (".tif", ".tiff")
# A zarr store is a folder; folder scans take it as one image and do not look inside.
ZARR_SUFFIX = ".zarr"
# A palette PNG indexes at most 256 colours; label images with more classes are TIFFs.
PNG_MAX_CLASSES = 256
# Opacity of the class colours in the quick-look overlay, on a 0-255 scale.
OVERLAY_ALPHA = 128
# Key of the class names stored inside label PNGs (a text chunk) and TIFFs (the description).
LABEL_METADATA_KEY = "napari-itaclip"


class ImageFile(NamedTuple):
    """An image found by `find_images` and the sub-folder (of the output folder) its outputs
    go to, which keeps the layout of the input folder."""

    path: Path
    folder: Path = Path()


# ------------------------------------------------------------------------------ reading
def is_tiff(path: Path) -> bool:
    return Path(path).suffix.lower() in TIFF_EXTENSIONS


def is_zarr(path: Path) -> bool:
    return Path(path).suffix.lower() == ZARR_SUFFIX and Path(path).is_dir()


def _kept_axes(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The axes of `shape` other than its length-1 ones (a single page or channel stored as a
    stack carries nothing), keeping at least the last two."""
    kept = tuple(axis for axis, size in enumerate(shape) if size != 1)
    return kept if len(kept) >= 2 else tuple(range(len(shape)))[-2:]


def _without_unit_axes(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape[axis] for axis in _kept_axes(shape))


class WithoutUnitAxes:
    """A lazy array (zarr) less its length-1 axes, as `read_image` gives a TIFF: indexing
    reads only what it selects (a reshape would read everything)."""

    def __init__(self, array):
        self.array = array
        self.kept = _kept_axes(tuple(array.shape))
        self.shape = _without_unit_axes(tuple(array.shape))
        self.ndim = len(self.shape)
        self.dtype = array.dtype

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        full = [0] * self.array.ndim
        padded = key + (slice(None),) * (self.ndim - len(key))
        for axis, index in zip(self.kept, padded, strict=True):
            full[axis] = index
        return np.asarray(self.array[tuple(full)])

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[()], dtype=dtype)


def _full_resolution(zarr, store) -> WithoutUnitAxes:
    """The zarr array of `store`, or level 0 of its multiscale image (a zarr group)."""
    node = zarr.open(store, mode="r")
    if isinstance(node, zarr.Group):
        attributes = node.attrs.asdict()
        # OME-Zarr 0.4 keeps `multiscales` at the top, 0.5 under "ome".
        multiscales = attributes.get("multiscales") or attributes.get("ome", {}).get("multiscales")
        if not multiscales:
            raise ValueError("a zarr group that is no OME-Zarr multiscale image")
        node = node[multiscales[0]["datasets"][0]["path"]]
    return WithoutUnitAxes(node)


def read_zarr(path: Path) -> WithoutUnitAxes:
    """A zarr array, or level 0 of an OME-Zarr multiscale image (a zarr group), lazily."""
    try:
        import zarr
    except ImportError:
        raise ValueError(
            "reading zarr needs the zarr package: pip install 'napari-itaclip[distributed]'"
        ) from None

    try:
        return _full_resolution(zarr, str(path))
    except Exception as exc:  # zarr raises several types for damaged or foreign stores
        raise ValueError(f"cannot read zarr: {exc}") from None


def read_image(path: Path, *, lazy: bool = False) -> np.ndarray:
    """The pixels of an image file, RGB(A) order, dtype as stored (16-bit stays 16-bit).

    TIFF through tifffile, as napari opens it: a stack keeps its planes ((Z, Y, X),
    (Z, Y, X, 3), ...; `planes.LayerPlanes.from_array` says which axes are planes), less its
    length-1 axes. Everything else through OpenCV, one plane. EXIF orientation is not applied,
    so labels line up with the stored pixels, as ground-truth files do.
    lazy: a TIFF is read as it is indexed (a stack one plane at a time, never whole), through
    tifffile's zarr interface, when a zarr it supports is installed; a zarr store always is.
    """
    path = Path(path)
    if is_zarr(path):
        return read_zarr(path)
    if is_tiff(path):
        import tifffile

        if lazy and importlib.util.find_spec("zarr") is not None:
            import zarr

            # Any failure reads the file whole instead: a damaged file is reported from there,
            # and tifffile's zarr interface needs a zarr it supports (zarr 3 for current ones).
            with suppress(Exception):
                return _full_resolution(zarr, tifffile.imread(path, aszarr=True))
        try:
            image = tifffile.imread(path)
        except Exception as exc:  # tifffile raises several types for damaged files
            raise ValueError(f"cannot read TIFF: {exc}") from None
        return image.reshape(_without_unit_axes(image.shape))
    import cv2

    image = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError("cannot decode the image (not an image, damaged, or an unknown format)")
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return image


def stored_shape(path: Path) -> tuple[int, ...] | None:
    """The shape `read_image` returns, from a TIFF's header without reading its pixels;
    None for other formats (one plane, whose size needs decoding)."""
    if is_zarr(path):
        return read_zarr(path).shape
    if not is_tiff(path):
        return None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            shape = tiff.series[0].shape
    except Exception as exc:  # as in read_image
        raise ValueError(f"cannot read TIFF: {exc}") from None
    return _without_unit_axes(tuple(int(size) for size in shape))


def read_label_image(path: Path) -> np.ndarray:
    """A ground-truth label image as stored: palette indices or grey values, never colours."""
    path = Path(path)
    if is_tiff(path):
        labels = read_image(path)
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                if image.mode not in ("P", "L", "I", "I;16", "I;16B"):
                    raise ValueError(
                        f"label image has mode {image.mode}; ground truth must be a palette or "
                        "greyscale image of class ids, not colours"
                    )
                labels = np.asarray(image)
        except UnidentifiedImageError:
            raise ValueError("cannot decode the label image") from None
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"label image must be 2D integer class ids, got shape {labels.shape} {labels.dtype}"
        )
    return labels


# ------------------------------------------------------------------------------ finding
def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def find_images(
    inputs, pattern: str | None = None, out_dir: Path | None = None
) -> tuple[list[ImageFile], list[str]]:
    """The images of `inputs` (files and folders), and one message per input that is neither.

    Folders are searched recursively for `pattern` (default: IMAGE_EXTENSIONS), skipping
    hidden files and anything under `out_dir`; a file's outputs keep its sub-folder of the
    searched folder. A file named in `inputs` is always taken, its outputs at the top.
    """
    found: dict[Path, ImageFile] = {}
    problems = []
    out_resolved = None if out_dir is None else Path(out_dir).resolve()
    for text in inputs:
        path = Path(text)
        if path.is_file() or is_zarr(path):
            found.setdefault(path.resolve(), ImageFile(path))
        elif path.is_dir():
            candidates = path.rglob(pattern) if pattern else path.rglob("*")
            for candidate in sorted(candidates):
                resolved = candidate.resolve()
                if (
                    not (candidate.is_file() or is_zarr(candidate))
                    or _is_hidden(candidate, path)
                    or (out_resolved is not None and out_resolved in resolved.parents)
                    or (
                        pattern is None
                        and candidate.suffix.lower() not in (*IMAGE_EXTENSIONS, ZARR_SUFFIX)
                    )
                ):
                    continue
                found.setdefault(resolved, ImageFile(candidate, candidate.parent.relative_to(path)))
        else:
            problems.append(f"{text}: no such file or folder")
    return list(found.values()), problems


def index_files(root: Path, suffix: str | None = None) -> dict[str, Path]:
    """Files under `root` (recursive) by id: the name less `suffix`, or less its extension
    when no suffix is given (then only image extensions count). ValueError if `root` is not
    a folder or two files have one id."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"not a folder: {root}")
    files: dict[str, Path] = {}
    for path in sorted(root.rglob(f"*{suffix}" if suffix else "*")):
        if not path.is_file() or _is_hidden(path, root):
            continue
        if suffix:
            key = path.name[: -len(suffix)]
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            key = path.stem
        else:
            continue
        if key in files:
            raise ValueError(
                f"two files under {root} have the id {key!r}: {files[key]} and {path}; narrow the "
                "folder or give --image-suffix/--label-suffix"
            )
        files[key] = path
    return files


# ------------------------------------------------------------------------------ writing
def check_output_folder(folder: Path) -> None:
    """ValueError unless `folder` is, or can be made, a folder this process writes in."""
    folder = Path(folder)
    for existing in (folder, *folder.parents):
        if not existing.exists():
            continue
        if not existing.is_dir():
            where = "is a file" if existing == folder else f"cannot be made: {existing} is a file"
            raise ValueError(f"output folder {folder} {where}")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ValueError(
                f"output folder {folder} cannot be written: no permission in {existing}"
            )
        return


def check_output_file(path: Path) -> None:
    """ValueError unless `path` can be written as a file (it is no folder; its folder can be
    made and written in)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"output file {path} is a folder")
    check_output_folder(path.parent)


@contextmanager
def replacing(path: Path):
    """Yield a temporary name next to `path`, moved onto it when the block succeeds.

    An interrupted run then never leaves a truncated file that a re-run would skip.
    The temporary name keeps the full file name (suffixes matter to the writers) and is
    hidden, so folder scans ignore it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def label_metadata(class_names, background: bool) -> dict:
    """What label files record about their class ids: the class names (a class id is its
    position) and whether the first class is the background."""
    return {"class_names": list(class_names), "background": bool(background)}


def write_label_png(path: Path, result) -> None:
    """A palette PNG of the class ids of a one-plane result (at most PNG_MAX_CLASSES)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    image = Image.fromarray(result.labels.astype(np.uint8, copy=False))
    image.putpalette(class_palette(result.n_classes, result.background).ravel().tolist())
    info = PngInfo()
    info.add_text(
        LABEL_METADATA_KEY, json.dumps(label_metadata(result.class_names, result.background))
    )
    image.save(path, pnginfo=info)


def write_label_tiff(path: Path, result) -> None:
    """A zlib TIFF of the class ids, (*stack, H, W) as the result holds them."""
    import tifffile

    tiff_metadata = {LABEL_METADATA_KEY: label_metadata(result.class_names, result.background)}
    # Grey pages, named: tifffile would store 3 or 4 planes of uint8 as one RGB(A) image.
    tifffile.imwrite(
        path,
        result.labels,
        compression="zlib",
        photometric="minisblack",
        metadata=tiff_metadata,
    )


def overlay_image(rgb: np.ndarray, labels: np.ndarray, palette: np.ndarray, background: bool):
    """uint8 RGB: the image with each pixel's class colour blended in; background left bare."""
    weight = np.where(painted_classes(len(palette), background), OVERLAY_ALPHA, 0).astype(np.uint16)
    alpha = weight[labels][..., None]
    colour = palette[labels].astype(np.uint16)
    # uint16 is enough: 255 * (255 - a) + 255 * a <= 65025.
    blended = rgb.astype(np.uint16) * (255 - alpha) + colour * alpha + 127
    return (blended // 255).astype(np.uint8)


def write_overlay(
    path: Path, image: np.ndarray, labels: np.ndarray, n_classes: int, background: bool
) -> None:
    """The overlay PNG of one plane: `image` (as read) and its class ids `labels`, coloured
    as a class list of `n_classes` (`background`: whether its first class is background)."""
    from PIL import Image

    from .engine import to_rgb_uint8

    rgb = to_rgb_uint8(image)  # the pixels as the engine saw them
    palette = class_palette(n_classes, background)
    Image.fromarray(overlay_image(rgb, labels, palette, background)).save(path)

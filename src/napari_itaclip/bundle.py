"""The result bundle: one segmentation (possibly corrected by hand) in one `*.itaclip.npz` file.

Format (numpy `savez_compressed`, read back with `allow_pickle=False`):

- `labels`: the label image, (*stack, H, W) uint8/uint16 **label ids** as in the napari Labels
  layer: with a background class list a label id is the class id (0 = background); without one
  it is class id + 1 and 0 means "unlabelled" (see `label_offset`).
- `probabilities`: (C, *stack, ceil(H/f), ceil(W/f)) float32 class probabilities, f being the
  probability factor (each value is the mean over the f x f block it covers).
- `class_names`: JSON list of the C class names, in class-id order.
- `colors`: JSON list of [r, g, b, a] floats in [0, 1], one per label id (C + label offset).
- `parameters`: JSON object of every parameter of the run.
- `meta`: JSON object: `format` ("napari-itaclip result bundle"), `version` (1),
  `probability_factor`, `background`, `label_offset`, `name` (the source image's name or null)
  and `geometry` (null, or the labels layer's `scale`, `translate`, `rotate`, `shear`, `affine`).

numpy only: the command line and the napari reader/writer share it.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .colors import class_colors

SUFFIX = ".itaclip.npz"
FORMAT = "napari-itaclip result bundle"
VERSION = 1
_ARRAYS = ("labels", "probabilities")
_JSON = ("class_names", "colors", "parameters", "meta")


def label_offset(background: bool) -> int:
    """What is added to a class id to get its label id: 0 with a background class, else 1."""
    return 0 if background else 1


def label_dtype(n_label_ids: int) -> np.dtype:
    return np.dtype(np.uint8 if n_label_ids <= 256 else np.uint16)


def label_image(result) -> np.ndarray:
    """The label ids of a `SegmentationResult` (class ids + offset) or a `ResultBundle`."""
    if isinstance(result, ResultBundle):
        return result.label_image
    offset = label_offset(result.background)
    if offset == 0:
        return result.labels
    dtype = label_dtype(len(result.class_names) + offset)
    return result.labels.astype(dtype) + dtype.type(offset)


@dataclass
class ResultBundle:
    """What `load_bundle` returns; the fields mirror `SegmentationResult` except `label_image`.

    label_image: (*stack, H, W) label ids (not class ids: see `label_offset`).
    probabilities: (C, *stack, H', W') float32.
    class_names, background, parameters, probability_factor: as in `SegmentationResult`.
    colors: (C + label offset, 4) RGBA, one row per label id.
    geometry: the labels layer's scale/translate/rotate/shear/affine, or None.
    name: the source image's name, or None.
    """

    label_image: np.ndarray
    probabilities: np.ndarray
    class_names: list[str]
    background: bool
    parameters: dict
    colors: np.ndarray
    probability_factor: int = 1
    geometry: dict | None = None
    name: str | None = None

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def save_bundle(
    path,
    result,
    *,
    labels=None,
    colors=None,
    geometry: dict | None = None,
    name: str | None = None,
) -> Path:
    """Write `result` (a `SegmentationResult` or `ResultBundle`) to `path` and return the path.

    labels: label ids replacing the result's own (a hand-corrected Labels layer's data), same
        shape as the result's labels.
    colors: (n, 4) RGBA per label id (default: `class_colors`, or the bundle's own).
    geometry: dict with any of scale, translate, rotate, shear, affine of the labels layer.
    name: the source image's name.
    `path` gets the `.itaclip.npz` suffix if it lacks it.
    """
    path = Path(path)
    if not path.name.endswith(SUFFIX):
        path = path.with_name(path.name.removesuffix(".npz") + SUFFIX)
    own_labels = label_image(result)
    labels = own_labels if labels is None else np.asarray(labels)
    if labels.shape != own_labels.shape:
        raise ValueError(
            f"labels have shape {labels.shape} but the result's labels have {own_labels.shape}"
        )
    offset = label_offset(result.background)
    n_ids = len(result.class_names) + offset
    if labels.size and int(labels.max()) >= n_ids:
        raise ValueError(
            f"labels hold the id {int(labels.max())} but {len(result.class_names)} classes only "
            f"have ids up to {n_ids - 1}"
        )
    if colors is None:
        colors = result.colors if isinstance(result, ResultBundle) else class_colors(n_ids)
    colors = np.asarray(colors, float)
    if colors.shape != (n_ids, 4):
        raise ValueError(f"colors must have shape ({n_ids}, 4), got {colors.shape}")
    if geometry is None and isinstance(result, ResultBundle):
        geometry = result.geometry
    if name is None and isinstance(result, ResultBundle):
        name = result.name
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "probability_factor": int(result.probability_factor),
        "background": bool(result.background),
        "label_offset": offset,
        "name": name,
        "geometry": None if geometry is None else _jsonable(geometry),
    }
    texts = {
        "class_names": list(result.class_names),
        "colors": colors.tolist(),
        "parameters": _jsonable(result.parameters),
        "meta": meta,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        np.savez_compressed(
            file,
            labels=labels.astype(label_dtype(n_ids), copy=False),
            probabilities=np.asarray(result.probabilities, np.float32),
            **{key: np.array(json.dumps(value)) for key, value in texts.items()},
        )
    return path


def _array_headers(path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array in an .npz, read from the headers only."""
    headers = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            with archive.open(member) as file:
                version = np.lib.format.read_magic(file)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(file)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(file)
            headers[member.removesuffix(".npy")] = (shape, dtype)
    return headers


def check_bundle(path) -> dict:
    """Raise ValueError unless `path` is a consistent result bundle; return its `meta`.

    Reads only the array headers and the small JSON entries, so it is cheap on big files.
    """
    path = Path(path)
    if not path.name.endswith(SUFFIX):
        raise ValueError(f"{path.name} is not a {SUFFIX} file")
    try:
        headers = _array_headers(path)
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise ValueError(f"{path.name} is not a readable .npz file: {exc}") from None
    missing = [key for key in (*_ARRAYS, *_JSON) if key not in headers]
    if missing:
        raise ValueError(f"{path.name} lacks the entries {', '.join(missing)}")
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(str(npz["meta"]))
        class_names = json.loads(str(npz["class_names"]))
        colors = json.loads(str(npz["colors"]))
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path.name} is not a {FORMAT}")
    if meta.get("version", 0) > VERSION:
        raise ValueError(
            f"{path.name} has bundle version {meta['version']}; this napari-itaclip reads up to "
            f"{VERSION}"
        )
    (labels_shape, labels_dtype), (prob_shape, _) = headers["labels"], headers["probabilities"]
    factor = int(meta["probability_factor"])
    if labels_dtype.kind != "u" or len(labels_shape) < 2:
        raise ValueError(f"{path.name}: labels must be an unsigned integer image")
    expected = (
        len(class_names),
        *labels_shape[:-2],
        *(math.ceil(size / factor) for size in labels_shape[-2:]),
    )
    if tuple(prob_shape) != expected:
        raise ValueError(
            f"{path.name}: probabilities have shape {tuple(prob_shape)}, expected {expected} "
            f"for {len(class_names)} classes, labels {tuple(labels_shape)} and factor {factor}"
        )
    if len(colors) != len(class_names) + int(meta["label_offset"]):
        raise ValueError(f"{path.name}: {len(colors)} colours for {len(class_names)} classes")
    return meta


def load_bundle(path) -> ResultBundle:
    """Read a bundle written by `save_bundle` (ValueError if it is not a consistent one)."""
    meta = check_bundle(path)
    with np.load(path, allow_pickle=False) as npz:
        return ResultBundle(
            label_image=npz["labels"],
            probabilities=npz["probabilities"],
            class_names=json.loads(str(npz["class_names"])),
            background=bool(meta["background"]),
            parameters=json.loads(str(npz["parameters"])),
            colors=np.asarray(json.loads(str(npz["colors"])), float),
            probability_factor=int(meta["probability_factor"]),
            geometry=meta["geometry"],
            name=meta["name"],
        )

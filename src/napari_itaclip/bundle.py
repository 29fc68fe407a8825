"""The result bundle: one segmentation (possibly corrected by hand) in one `*.itaclip` file.

The file is an .npz (a zip of .npy arrays) named `*.itaclip`: an extension only this plugin
claims, so napari opens it by drag and drop or `viewer.open(path)` without asking which reader
(napari's own reader claims `*.npz`). Bundles of earlier versions, `*.itaclip.npz`, are read.

Format (numpy `savez_compressed`, read back with `allow_pickle=False`):

- `labels`: the label image, (*stack, H, W) uint8/uint16 **label ids** as in the napari Labels
  layer: with a background class list a label id is the class id (0 = background); without one
  it is class id + 1 and 0 means "unlabelled" (the convention of `labels.py`).
- `probabilities`: (C, *stack, ceil(H/f), ceil(W/f)) float32 class probabilities, f being the
  probability factor (each value is the mean over the f x f block it covers).
- `class_names`: JSON list of the C class names, in class-id order.
- `colors`: JSON list of [r, g, b, a] floats in [0, 1], one per label id (C + label offset).
- `parameters`: JSON object of every parameter of the run.
- `meta`: JSON object: `format` ("napari-itaclip result bundle"), `version` (1),
  `probability_factor`, `background`, `label_offset`, `name` (the source image's name or null)
  and `geometry` (null, or the labels layer's `scale`, `translate`, `rotate`, `shear`, `affine`).

numpy only: the command line and the napari reader/writer share it. `save_bundle` writes a
`labels.ResultRecord` (or a `SegmentationResult`, through its record); `load_bundle` returns one.
"""

from __future__ import annotations

import json
import math
import warnings
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from .labels import ResultRecord, label_id_dtype, to_record
from .labels import label_offset as _label_offset

SUFFIX = ".itaclip"
LEGACY_SUFFIX = ".itaclip.npz"  # what 0.1 wrote; still read
FORMAT = "napari-itaclip result bundle"
VERSION = 1
_ARRAYS = ("labels", "probabilities")
_JSON = ("class_names", "colors", "parameters", "meta")


def __getattr__(name):
    # Names this module had before the label convention moved to `labels.py`.
    replacements = {
        "ResultBundle": ("labels.ResultRecord", ResultRecord),
        "label_dtype": ("labels.label_id_dtype", _label_dtype),
        "label_image": ("labels.to_record(result).label_image", _label_image),
        "label_offset": ("labels.label_offset", _label_offset),
    }
    if name not in replacements:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    replacement, value = replacements[name]
    warnings.warn(
        f"napari_itaclip.bundle.{name} is deprecated; use napari_itaclip.{replacement}",
        DeprecationWarning,
        stacklevel=2,
    )
    return value


def _label_dtype(n_label_ids: int) -> np.dtype:
    return label_id_dtype(n_label_ids, background=True)


def _label_image(result) -> np.ndarray:
    return to_record(result).label_image


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
    """Write `result` (a `SegmentationResult` or `ResultRecord`) to `path` and return the path.

    labels: label ids replacing the result's own (a hand-corrected Labels layer's data), same
        shape as the result's labels.
    colors: (n, 4) RGBA per label id (default: the record's, `labels.label_colors`).
    geometry: dict with any of scale, translate, rotate, shear, affine of the labels layer
        (default: the record's).
    name: the source image's name (default: the record's).
    `path` gets the `.itaclip` suffix if it lacks it (a legacy `.itaclip.npz` becomes
    `.itaclip`).
    """
    path = Path(path)
    if not path.name.endswith(SUFFIX):
        stem = path.name.removesuffix(".npz").removesuffix(SUFFIX)
        path = path.with_name(stem + SUFFIX)
    own = to_record(result)
    given = {"label_image": labels, "colors": colors, "geometry": geometry, "name": name}
    record = replace(own, **{key: value for key, value in given.items() if value is not None})
    labels = np.asarray(record.label_image)
    shape = own.label_image.shape
    if labels.shape != shape:
        raise ValueError(f"labels have shape {labels.shape} but the result's labels have {shape}")
    n_ids = record.n_classes + record.label_offset
    if labels.size and int(labels.max()) >= n_ids:
        raise ValueError(
            f"labels hold the id {int(labels.max())} but {record.n_classes} classes only "
            f"have ids up to {n_ids - 1}"
        )
    colors = np.asarray(record.colors, float)
    if colors.shape != (n_ids, 4):
        raise ValueError(f"colors must have shape ({n_ids}, 4), got {colors.shape}")
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "probability_factor": int(record.probability_factor),
        "background": bool(record.background),
        "label_offset": record.label_offset,
        "name": record.name,
        "geometry": None if record.geometry is None else _jsonable(record.geometry),
    }
    texts = {
        "class_names": list(record.class_names),
        "colors": colors.tolist(),
        "parameters": _jsonable(record.parameters),
        "meta": meta,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        np.savez_compressed(
            file,
            labels=labels.astype(label_id_dtype(record.n_classes, record.background), copy=False),
            probabilities=np.asarray(record.probabilities, np.float32),
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
    if not path.name.endswith((SUFFIX, LEGACY_SUFFIX)):
        raise ValueError(f"{path.name} is not a {SUFFIX} (or {LEGACY_SUFFIX}) file")
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


def load_bundle(path) -> ResultRecord:
    """Read a bundle written by `save_bundle` (ValueError if it is not a consistent one)."""
    meta = check_bundle(path)
    with np.load(path, allow_pickle=False) as npz:
        return ResultRecord(
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

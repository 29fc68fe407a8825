"""The one way from a segmentation result to napari layers (widget, notebook API and reader).

`result_to_layer_data` returns plain `LayerData` tuples `(data, kwargs, layer_type)`, so it needs
no viewer (and no napari import unless a source layer is given):

- one probability Image layer per class, `<image> p(<class>)`, first, then
- the Labels layer `<image> labels` last, so it is drawn on top.

Both a fresh `SegmentationResult` and a `labels.ResultRecord` (a bundle file) go through the
record (`labels.to_record`), which holds the label ids, colours, geometry and name. Label ids
follow `labels.py`: with a background class list the label id is the class id (0 = background);
without one it is class id + 1 and 0 stays "unlabelled" for correction. The Labels layer's
`features` table has an `index` column (label id) and a `class` column (its name), so hovering
shows the class name; each label id has its fixed colour, label 0 is transparent.

Probability layers: a black-to-class-colour colormap with additive blending and contrast 0-1, so
the visible ones mix like colour channels; only the first `VISIBLE_PROBABILITY_LAYERS`
non-background classes are visible. Every class gets one when there are at most
`ALL_PROBABILITY_LAYERS_UP_TO` classes; longer lists (coco_stuff has 171) get one for each class
present in the labels only, since each layer costs GUI time to add. When probabilities were
kept at 1/f of the size they are placed with scale * f and a shift of (f - 1) / 2 pixels (the
centre of the f x f block).

Geometry: scale, translate, rotate, shear and affine come from the source layer, less its channel
axis if one was mapped to RGB, shifted to the plane a single-plane run came from.

Metadata of every layer: `metadata["itaclip"]` holds the class names, label names, background
flag, label offset, every parameter of the run, timings, probability factor, the source image's
name, the layer's role ("labels" or "probability") and an id shared by the layers of one run. The
Labels layer also keeps `labels_checksum` (of the labels as computed, to notice corrections) and,
under `metadata["itaclip_probabilities"]`, the (C, ...) probability array that the writer saves
(the probability layers' data are views of it, not copies).
"""

from __future__ import annotations

import hashlib
import uuid

import numpy as np

from .labels import BACKGROUND_COLOR, BACKGROUND_LABEL, to_record
from .labels import label_names as label_names  # its home before labels.py

LayerData = tuple  # (data, kwargs, layer_type) as napari's readers return

VISIBLE_PROBABILITY_LAYERS = 3
# Each napari layer costs ~0.1 s of GUI time to add, so long class lists get probability layers
# only for the classes present in the labels (all maps stay in the metadata and the bundle).
ALL_PROBABILITY_LAYERS_UP_TO = 10
LABELS_OPACITY = 0.6


def labels_name(source_name: str) -> str:
    return f"{source_name} labels"


def probability_name(source_name: str, class_name: str) -> str:
    return f"{source_name} p({class_name})"


def checksum(array: np.ndarray) -> str:
    """A digest of label data, to tell whether a Labels layer was edited since it was made."""
    return hashlib.blake2b(np.ascontiguousarray(array).view(np.uint8), digest_size=16).hexdigest()


# ---------------------------------------------------------------------------- geometry
def _shear_matrix(shear, ndim: int) -> np.ndarray:
    shear = np.asarray(shear, float)
    if shear.ndim == 2:
        return shear
    # napari stores a shear as the upper-triangle values of an upper triangular matrix.
    matrix = np.eye(ndim)
    matrix[np.triu_indices(ndim, 1)] = shear
    return matrix


def _identity_geometry(ndim: int) -> dict:
    return {
        "scale": np.ones(ndim),
        "translate": np.zeros(ndim),
        "rotate": np.eye(ndim),
        "shear": np.eye(ndim),
        "affine": np.eye(ndim + 1),
    }


def _layer_geometry(layer, dropped_axis: int | None) -> dict:
    """The layer's data-to-world transform pieces, less `dropped_axis` (a channel axis)."""
    ndim = layer.ndim
    keep = [axis for axis in range(ndim) if axis != dropped_axis]
    rows = np.ix_(keep, keep)
    return {
        "scale": np.asarray(layer.scale, float)[keep],
        "translate": np.asarray(layer.translate, float)[keep],
        "rotate": np.asarray(layer.rotate, float)[rows],
        "shear": _shear_matrix(layer.shear, ndim)[rows],
        "affine": np.asarray(layer.affine.affine_matrix, float)[
            np.ix_([*keep, ndim], [*keep, ndim])
        ],
    }


def _placed(geometry: dict, factor: np.ndarray, offset: np.ndarray) -> dict:
    """Geometry of data whose pixel x sits at `factor * x + offset` in `geometry`'s data.

    napari maps data to world as affine(rotate @ shear @ diag(scale) @ x + translate), so the
    offset goes through the linear part and the factor multiplies the scale.
    """
    linear = geometry["rotate"] @ _shear_matrix(geometry["shear"], len(geometry["scale"]))
    linear = linear @ np.diag(geometry["scale"])
    return {
        **geometry,
        "scale": np.asarray(geometry["scale"]) * factor,
        "translate": np.asarray(geometry["translate"]) + linear @ offset,
    }


def labels_geometry(result, source_layer=None) -> dict:
    """Where the result's labels sit: the source layer's geometry (or the record's stored one),
    less a channel axis, moved to the plane of a single-plane run."""
    record = to_record(result)
    ndim = record.label_image.ndim
    parameters = record.parameters
    if source_layer is not None:
        geometry = _layer_geometry(source_layer, parameters.get("channel_axis"))
    elif record.geometry:
        return {
            **_identity_geometry(ndim),
            **{key: np.asarray(value, float) for key, value in record.geometry.items()},
        }
    else:
        geometry = _identity_geometry(ndim)
    if len(geometry["scale"]) != ndim:
        raise ValueError(
            f"the result has {ndim} dimensions but the source layer {source_layer.name!r} maps "
            f"{len(geometry['scale'])}"
        )
    offset = np.zeros(ndim)
    plane_offset = parameters.get("plane_offset") or []
    offset[: len(plane_offset)] = plane_offset
    return _placed(geometry, np.ones(ndim), offset)


def probability_geometry(labels_geom: dict, factor: int) -> dict:
    ndim = len(labels_geom["scale"])
    spatial = np.zeros(ndim, bool)
    spatial[-2:] = True
    return _placed(
        labels_geom, np.where(spatial, factor, 1), np.where(spatial, (factor - 1) / 2, 0)
    )


def _geometry_kwargs(geometry: dict) -> dict:
    return {key: np.asarray(value) for key, value in geometry.items()}


# ------------------------------------------------------------------------------ layers
def _probability_colormap(color) -> dict:
    # Brightest shade of the class colour, so dark palette entries still read as a colour.
    rgb = np.asarray(color[:3], float)
    rgb = rgb / rgb.max() if rgb.max() > 0 else np.ones(3)
    # napari registers colormaps by name: name it by its colour so runs share one entry.
    name = "itaclip #" + "".join(f"{round(c * 255):02x}" for c in rgb)
    return {"name": name, "colors": [[0.0, 0.0, 0.0, 1.0], [*rgb, 1.0]], "interpolation": "linear"}


def result_to_layer_data(result, source_layer=None) -> list[LayerData]:
    """Layer data for a `SegmentationResult` (also stacked, see `planes.segment_planes`) or a
    `labels.ResultRecord`: the probability Image layers, then the Labels layer (module doc).

    source_layer: the napari layer that was segmented; its name and geometry are used. Without
    it, the record's stored name and geometry are used, else the name "ITACLIP" and unit scale.
    """
    record = to_record(result)
    labels = record.label_image
    names = record.label_names
    offset = record.label_offset
    colors = record.colors
    if source_layer is not None:
        source_name = source_layer.name
    else:
        source_name = record.name or record.parameters.get("source_layer") or "ITACLIP"
    geometry = labels_geometry(record, source_layer)
    factor = record.probability_factor
    info = {
        "class_names": list(record.class_names),
        "label_names": names,
        "background": record.background,
        "label_offset": offset,
        "parameters": dict(record.parameters),
        "timings": dict(record.timings),
        "probability_factor": factor,
        "source": source_name,
        "result_id": uuid.uuid4().hex,
    }
    colormap = {
        label: BACKGROUND_COLOR if label == BACKGROUND_LABEL else tuple(colors[label])
        for label in range(len(names))
    }
    colormap[None] = BACKGROUND_COLOR
    labels_layer = (
        labels,
        {
            "name": labels_name(source_name),
            "features": {"index": np.arange(len(names)), "class": names},
            "colormap": colormap,
            "opacity": LABELS_OPACITY,
            "metadata": {
                "itaclip": {
                    **info,
                    "role": "labels",
                    # A loaded file may already hold corrections, so it gets no checksum: a
                    # re-run never replaces it (see viewer.add_result_layers).
                    "labels_checksum": checksum(labels) if record.fresh else None,
                },
                "itaclip_probabilities": record.probabilities,
            },
            **_geometry_kwargs(geometry),
        },
        "labels",
    )
    prob_kwargs = _geometry_kwargs(probability_geometry(geometry, factor))
    if record.n_classes <= ALL_PROBABILITY_LAYERS_UP_TO:
        present = np.ones(len(names), bool)
    else:
        present = np.bincount(labels.ravel(), minlength=len(names)) > 0
    probability_layers = []
    shown = 0
    for class_id, probabilities in enumerate(record.probabilities):
        label = class_id + offset
        if not present[label]:
            continue
        visible = label != BACKGROUND_LABEL and shown < VISIBLE_PROBABILITY_LAYERS
        shown += visible
        probability_layers.append(
            (
                probabilities,
                {
                    "name": probability_name(source_name, names[label]),
                    "colormap": _probability_colormap(colors[label]),
                    "contrast_limits": (0.0, 1.0),
                    "blending": "additive",
                    "visible": visible,
                    "metadata": {"itaclip": {**info, "role": "probability", "class_id": class_id}},
                    **prob_kwargs,
                },
                "image",
            )
        )
    return [*probability_layers, labels_layer]

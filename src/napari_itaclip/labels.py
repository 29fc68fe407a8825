"""The label convention, and the one layer-ready record of a result (numpy only).

The engine returns **class ids**: 0 is the first class of the list. napari's Labels layer,
the result bundle and the label names use **label ids**:

- with a background class list (`background=True`) the label id is the class id, and label 0
  is the background class;
- without one, the label id is class id + 1 and label 0 means "unlabelled", left free for
  hand correction.

Label 0 (`BACKGROUND_LABEL`) is never painted: transparent in napari, left bare in overlays.
Every other label id has the fixed colour of its value in the PASCAL VOC colour map
(`colors.class_colors`), so a class keeps its colour across runs, files and tools; the command
line's class-id images use the colour of the class's label id.

dtype rules: label ids are stored as `label_id_dtype` (uint8 while every label id fits, else
uint16). The engine's class-id arrays follow their own rule, `engine.postprocess.class_id_dtype`
(by class count): without a background class 256 classes fit uint8 as class ids but not as
label ids.

`ResultRecord` is a result in this convention, ready for `layers.result_to_layer_data` and
`bundle.save_bundle`: built from a fresh `SegmentationResult` (`ResultRecord.from_result`) or
read from a bundle file (`ResultRecord.from_bundle`, which is `bundle.load_bundle`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .colors import class_colors, class_colors_uint8

BACKGROUND_LABEL = 0
BACKGROUND_COLOR = (0.0, 0.0, 0.0, 0.0)  # how label 0 is drawn: transparent


def label_offset(background: bool) -> int:
    """What is added to a class id to get its label id: 0 with a background class, else 1."""
    return 0 if background else 1


def label_id_dtype(n_classes: int, background: bool) -> np.dtype:
    """The unsigned dtype holding every label id of `n_classes` classes."""
    return np.dtype(np.uint8 if n_classes + label_offset(background) <= 256 else np.uint16)


def label_ids(class_ids: np.ndarray, n_classes: int, background: bool) -> np.ndarray:
    """Class ids -> label ids (a copy in `label_id_dtype` when the offset is 1)."""
    offset = label_offset(background)
    if offset == 0:
        return class_ids
    dtype = label_id_dtype(n_classes, background)
    return class_ids.astype(dtype) + dtype.type(offset)


def class_ids(label_image: np.ndarray, background: bool) -> np.ndarray:
    """Label ids -> class ids; an unlabelled pixel (label 0 without background) becomes -1."""
    offset = label_offset(background)
    if offset == 0:
        return label_image
    return label_image.astype(np.int32) - offset


def label_names(class_names: list[str], background: bool) -> list[str]:
    """The name of every label id: "background" or "unlabelled" first, then the classes."""
    if background:
        return ["background", *class_names[1:]]
    return ["unlabelled", *class_names]


def label_colors(n_classes: int, background: bool) -> np.ndarray:
    """(n label ids, 4) RGBA in [0, 1], one row per label id (what a bundle stores)."""
    return class_colors(n_classes + label_offset(background))


def class_palette(n_classes: int, background: bool) -> np.ndarray:
    """(n_classes, 3) uint8: the colour of each class id, which is that of its label id."""
    offset = label_offset(background)
    return class_colors_uint8(n_classes + offset)[offset:]


def painted_classes(n_classes: int, background: bool) -> np.ndarray:
    """(n_classes,) bool: False for the class whose label id is `BACKGROUND_LABEL`."""
    return np.arange(n_classes) + label_offset(background) != BACKGROUND_LABEL


@dataclass
class ResultRecord:
    """A result in label ids, with what turns it into layers or a bundle file.

    label_image: (*stack, H, W) label ids (not class ids: see the module doc).
    probabilities: (C, *stack, H', W') float32, H' = ceil(H / probability_factor).
    class_names, background, parameters, probability_factor, timings: as in
        `SegmentationResult`.
    colors: (C + label offset, 4) RGBA, one row per label id.
    geometry: the labels layer's scale/translate/rotate/shear/affine, or None (then the
        source layer's, or unit scale).
    name: the source image's name, or None.
    fresh: the labels are exactly as the engine computed them (not loaded from a file, which
        may hold corrections): their layer gets a checksum, so that a re-run may replace it.
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
    timings: dict = field(default_factory=dict)
    fresh: bool = False

    @classmethod
    def from_result(cls, result) -> ResultRecord:
        """The record of a `SegmentationResult` (also a stacked one from `segment_planes`)."""
        n_classes, background = len(result.class_names), bool(result.background)
        return cls(
            label_image=label_ids(result.labels, n_classes, background),
            probabilities=result.probabilities,
            class_names=list(result.class_names),
            background=background,
            parameters=result.parameters,
            colors=label_colors(n_classes, background),
            probability_factor=int(result.probability_factor),
            timings=dict(result.timings),
            fresh=True,
        )

    @classmethod
    def from_bundle(cls, path) -> ResultRecord:
        """The record stored in a bundle file (`*.itaclip`, or a legacy `*.itaclip.npz`) (ValueError if it is not one)."""
        from .bundle import load_bundle

        return load_bundle(path)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def label_offset(self) -> int:
        return label_offset(self.background)

    @property
    def label_names(self) -> list[str]:
        return label_names(self.class_names, self.background)


def to_record(result) -> ResultRecord:
    """A `ResultRecord` as it is, or the record of a `SegmentationResult`."""
    return result if isinstance(result, ResultRecord) else ResultRecord.from_result(result)

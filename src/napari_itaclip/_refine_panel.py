"""The dock widget's "Refine from edits" section (docs/napari.md, "The annotation loop").

Pick a result's labels layer you corrected (and, optionally, an examples layer of strokes);
**Refine from edits** turns the corrected pixels and the strokes into examples
(`corrections`), segments again on the kept image features (`corrections.refine_planes`, in
the widget's worker), and writes the new labels into the same layer as one undo step
(`viewer.apply_refinement`). What is computed lives in `corrections`; this module gathers the
job on the GUI thread and makes an examples layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, PushButton
from napari.layers import Labels

from .corrections import Corrections, fit_to_planes, strokes_to_class_ids
from .engine import Request
from .labels import BACKGROUND_COLOR
from .planes import LayerPlanes

REFINE_TOOLTIP = (
    "Segment again with the pixels you changed on this labels layer (and the strokes of the "
    "examples layer) as examples; Ctrl-Z on the labels layer undoes it"
)
NO_STROKES = "none"


def _info(layer) -> dict:
    return layer.metadata.get("itaclip", {})


def is_result_labels(layer) -> bool:
    return isinstance(layer, Labels) and _info(layer).get("role") == "labels"


@dataclass
class RefineJob:
    """Everything a refinement needs, gathered on the GUI thread before the worker starts."""

    layer: Labels
    planes: LayerPlanes
    request: Request
    examples: np.ndarray  # class ids (-1: none) at the layer's shape
    before: np.ndarray  # the layer's labels when the refinement started
    origin: int  # the engine write they come from (`Corrections.origin`)
    every_plane: bool
    model_key: tuple
    cancel: Callable[[], bool] = lambda: False  # set to the worker's abort flag


class RefinePanel:
    """labels to refine, examples layer, all planes, New examples layer, Refine from edits."""

    def __init__(self, viewer):
        self.viewer = viewer
        self.target = ComboBox(
            label="refine", choices=self._result_choices,
            tooltip="A result's labels layer; paint your corrections on it",
        )  # fmt: skip
        self.strokes = ComboBox(
            label="examples layer", choices=self._strokes_choices,
            tooltip="Optional: a Labels layer of strokes, value = class id + 1 (0: none)",
        )  # fmt: skip
        self.all_planes = CheckBox(
            text="all planes", value=False,
            tooltip="Examples from the edited planes refine every plane of the stack",
        )  # fmt: skip
        self.new_strokes = PushButton(text="New examples layer")
        self.refine_button = PushButton(text="Refine from edits", tooltip=REFINE_TOOLTIP)
        buttons = Container(
            widgets=[self.new_strokes, self.refine_button], layout="horizontal", labels=False
        )
        self.container = Container(widgets=[self.target, self.strokes, self.all_planes, buttons])
        self.new_strokes.changed.connect(self.add_strokes_layer)
        self.target.changed.connect(self._show_plane_option)
        self._show_plane_option()

    def _result_choices(self, _widget):
        # newest (topmost) first, so a fresh result is the default
        return [
            (layer.name, layer) for layer in self.viewer.layers[::-1] if is_result_labels(layer)
        ]

    def _strokes_choices(self, _widget):
        others = [layer for layer in self.viewer.layers if isinstance(layer, Labels)]
        return [(NO_STROKES, None)] + [
            (layer.name, layer) for layer in others if not is_result_labels(layer)
        ]

    def _show_plane_option(self, *_):
        layer = self.target.value
        self.all_planes.visible = layer is not None and layer.ndim > 2 and layer.data.shape[0] > 1

    def reset_choices(self) -> None:
        self.container.reset_choices()
        self._show_plane_option()

    def choose_newest(self) -> None:
        """Refine the newest result (after a run) until the user picks another."""
        self.target.reset_choices()
        if self.target.choices:
            self.target.value = self.target.choices[0]

    def add_strokes_layer(self, *_) -> Labels | None:
        """An empty examples layer over the chosen result, coloured and named by class."""
        layer = self.target.value
        if layer is None:
            raise ValueError("no result labels layer to paint examples for: run first")
        info = _info(layer)
        offset = info["label_offset"]
        colors = layer.colormap.color_dict
        n_classes = len(info["class_names"])
        colormap = {value: colors[value - 1 + offset] for value in range(1, n_classes + 1)}
        strokes = self.viewer.add_labels(
            np.zeros(layer.data.shape, np.uint16 if n_classes >= 255 else np.uint8),
            name=f"{info['source']} examples",
            colormap={**colormap, 0: BACKGROUND_COLOR, None: BACKGROUND_COLOR},
            features={
                "index": np.arange(n_classes + 1),
                "class": ["no example", *info["class_names"]],
            },
            **{key: getattr(layer, key) for key in ("scale", "translate", "rotate", "shear")},
            affine=layer.affine.affine_matrix,
        )
        strokes.mode = "paint"
        strokes.selected_label = 1
        self.strokes.reset_choices()
        self.strokes.value = strokes
        return strokes

    def job(self, request_for: Callable[[dict], Request], model_key: tuple) -> RefineJob:
        """The refinement of the chosen labels layer; ValueError naming what is missing.

        request_for(info): the request to refine with, from the layer's `metadata["itaclip"]`.
        """
        layer = self.target.value
        if layer is None:
            raise ValueError("no result labels layer to refine: run first")
        info = _info(layer)
        planes = self._planes(layer, info)
        request = replace(request_for(info), probability_downsample=info["probability_factor"])
        before = np.array(layer.data, copy=True)
        corrections = Corrections.of(layer)
        origin = corrections.origin(before)
        n_classes = len(info["class_names"])
        examples = corrections.examples(before, origin, n_classes, info["background"])
        strokes_layer = self.strokes.value
        if strokes_layer is not None:
            strokes = fit_to_planes(strokes_to_class_ids(strokes_layer.data, n_classes), planes)
            examples = np.where(strokes >= 0, strokes, examples)
        if not (examples >= 0).any():
            raise ValueError(
                f"nothing to refine from: no pixel of {layer.name!r} was changed since it was "
                "made, and the examples layer holds no stroke"
            )
        every_plane = self.all_planes.value  # (a 2D result has one plane either way)
        return RefineJob(layer, planes, request, examples, before, origin, every_plane, model_key)

    def _planes(self, layer, info: dict) -> LayerPlanes:
        """The planes the result was made from, as its run read them."""
        source = info["source"]
        if source not in self.viewer.layers:
            raise ValueError(f"the image {source!r} that {layer.name!r} was made from is gone")
        parameters = info["parameters"]
        planes = LayerPlanes.from_layer(
            self.viewer.layers[source],
            channel_axis=parameters.get("channel_axis"),
            channels=parameters.get("channels"),
        )
        if parameters.get("planes") == "current":
            planes = replace(planes, plane=tuple(parameters["plane_offset"]))
        if layer.data.shape != (*planes.output_stack_shape, *planes.plane_shape):
            raise ValueError(
                f"{layer.name!r} of shape {layer.data.shape} no longer fits the image {source!r}"
            )
        return planes

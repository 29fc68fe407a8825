"""The dock widget's input controls: the image, which planes of a stack, and which channels
of a multichannel image go to R, G, B (they give the `planes.LayerPlanes` of a run); and the
model controls (they give the shared segmenter's key)."""

from __future__ import annotations

from magicgui.widgets import ComboBox, Container, FileEdit, LineEdit
from napari.layers import Image

from ._controls import integers
from .engine import DEFAULT_MODEL, DEFAULT_PRETRAINED, PRECISIONS
from .planes import LayerPlanes, current_position

CURRENT_PLANE, ALL_PLANES = "current plane", "all planes"


class InputPanel:
    """image, planes, channel axis and channels → RGB (shown only when they apply)."""

    def __init__(self, viewer):
        self.viewer = viewer
        self.image = ComboBox(label="image", choices=self._image_choices)
        self.planes = ComboBox(label="planes", choices=[CURRENT_PLANE, ALL_PLANES])
        self.channel_axis = ComboBox(label="channel axis", choices=self._channel_axis_choices)
        self.channels = LineEdit(
            label="channels → RGB", value="0, 1, 2",
            tooltip="Up to 3 channel indices of the channel axis, mapped to R, G, B",
        )  # fmt: skip
        self.container = Container(
            widgets=[self.image, self.planes, self.channel_axis, self.channels]
        )
        self.channel_axis.changed.connect(self.update)

    def _image_choices(self, _widget):
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _channel_axis_choices(self, _widget):
        layer = self.image.value
        choices = [("none (RGB or grey)", None)]
        if layer is not None and not layer.rgb and layer.ndim >= 3:
            shape = layer.data[0].shape if layer.multiscale else layer.data.shape
            choices += [(f"axis {axis} ({shape[axis]})", axis) for axis in range(layer.ndim)]
        return choices

    def update(self, *_):
        """Show the channel and plane controls only where the image has such axes."""
        layer = self.image.value
        self.channel_axis.reset_choices()
        multichannel = layer is not None and not layer.rgb and layer.ndim >= 3
        self.channel_axis.visible = multichannel
        self.channels.visible = multichannel and self.channel_axis.value is not None
        if layer is None:
            self.planes.visible = False
            return
        image_axes = layer.ndim - (self.channel_axis.value is not None)
        self.planes.visible = image_axes > 2

    def image_changed(self) -> None:
        self.channel_axis.value = None
        self.update()

    def layer_planes(self) -> LayerPlanes:
        """The planes of the chosen image to segment (ValueError naming the problem)."""
        layer = self.image.value
        if layer is None:
            raise ValueError("no image layer: open an image first")
        channel_axis = self.channel_axis.value
        channels = None
        if channel_axis is not None:
            channels = list(
                integers(self.channels.value, "channels must be up to 3 integers such as '0, 1, 2'")
            )
        position = (
            current_position(self.viewer, layer) if self.planes.value == CURRENT_PLANE else "all"
        )
        return LayerPlanes.from_layer(
            layer, channel_axis=channel_axis, channels=channels, position=position
        )


class ModelPanel:
    """model name, pretrained tag or weights file, precision: what the segmenter is made of."""

    def __init__(self):
        self.model = LineEdit(label="model", value=DEFAULT_MODEL)
        self.pretrained = LineEdit(label="pretrained", value=DEFAULT_PRETRAINED)
        self.weights = FileEdit(
            label="weights file", mode="r", nullable=True,
            tooltip="A local weights file; when set it replaces the pretrained tag",
        )  # fmt: skip
        self.precision = ComboBox(
            label="precision", choices=list(PRECISIONS), value="auto",
            tooltip="auto: fp16 autocast on CUDA, fp32 elsewhere",
        )  # fmt: skip
        self.container = Container(
            widgets=[self.model, self.pretrained, self.weights, self.precision]
        )

    def key(self, device: str) -> tuple:
        """The shared segmenter's key (`segmenters.SEGMENTERS`): a weights file replaces the tag."""
        weights = self.weights.value
        pretrained = str(weights) if weights else self.pretrained.value.strip()
        return (self.model.value.strip(), pretrained, device, self.precision.value)

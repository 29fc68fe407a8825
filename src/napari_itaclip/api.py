"""Segmenting napari layers: the plain functions behind the dock widget and the notebook API.

- `LayerPlanes` says which planes of an image layer are segmented and reads them one at a time
  (a dask- or zarr-backed layer is never read whole).
- `segment_planes` runs `ITACLIP.segment` on each plane and stacks the results; it touches no
  Qt, so the widget runs it in a worker thread.
- `add_result_layers` adds the layers of `layers.result_to_layer_data` to a viewer, replacing
  the previous result of the same image only when it was not edited.
- `segment_layer` is the notebook API: the three above, synchronously.

napari is imported inside functions only, so importing this module stays cheap.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .engine.image import PROBABILITY_BUDGET_BYTES, probability_downsample_for_budget
from .engine.models import DEFAULT_MODEL, DEFAULT_PRETRAINED
from .layers import checksum, labels_name, result_to_layer_data

MAX_CHANNELS = 3


@dataclass(frozen=True)
class LayerPlanes:
    """The planes of an image layer to segment, read lazily one at a time.

    Layer axes are napari's (for an RGB layer the colour axis is not one). The two last axes
    other than `channel_axis` are the image plane (Y, X); the remaining ones are stack axes.
    `plane` is None for all planes, else the stack index of the one plane to segment.
    """

    data: Any
    name: str
    rgb: bool
    spatial_axes: tuple[int, int]
    stack_axes: tuple[int, ...]
    stack_shape: tuple[int, ...]
    channel_axis: int | None = None
    channels: tuple[int, ...] = ()
    plane: tuple[int, ...] | None = None

    @classmethod
    def from_layer(
        cls, layer, *, channel_axis: int | None = None, channels=None, position="all"
    ) -> LayerPlanes:
        """position: "all" for every plane, or a point in the layer's data coordinates (one
        value per layer axis, e.g. from `current_position`) whose stack indices pick one plane.
        channel_axis, channels: a layer axis holding channels and up to 3 of its indices, mapped
        to R, G, B (one channel is used as grey, two fill R and G).
        """
        from napari.layers import Image

        if not isinstance(layer, Image):
            raise TypeError(f"layer {layer.name!r} is a {type(layer).__name__} layer, not an Image")
        data = layer.data[0] if layer.multiscale else layer.data
        ndim = layer.ndim
        shape = tuple(int(s) for s in data.shape[:ndim])
        if channel_axis is not None:
            if layer.rgb:
                raise ValueError(
                    f"layer {layer.name!r} is RGB; it has no channel axis to pick from"
                )
            if not -ndim <= channel_axis < ndim:
                raise ValueError(f"channel axis {channel_axis} is out of range for {ndim} axes")
            channel_axis %= ndim
            n_channels = shape[channel_axis]
            channels = (
                tuple(range(min(MAX_CHANNELS, n_channels))) if channels is None else tuple(channels)
            )
            if not 1 <= len(channels) <= MAX_CHANNELS or len(set(channels)) != len(channels):
                raise ValueError(f"pick 1 to {MAX_CHANNELS} different channels, got {channels}")
            if not all(0 <= c < n_channels for c in channels):
                raise ValueError(
                    f"channels {channels} out of range: axis {channel_axis} has {n_channels}"
                )
        elif channels is not None:
            raise ValueError("channels were given without a channel axis")
        image_axes = [axis for axis in range(ndim) if axis != channel_axis]
        if len(image_axes) < 2:
            raise ValueError(f"layer {layer.name!r} has no 2D image plane (shape {data.shape})")
        spatial_axes = tuple(image_axes[-2:])
        stack_axes = tuple(image_axes[:-2])
        stack_shape = tuple(shape[axis] for axis in stack_axes)
        plane = None
        if not (isinstance(position, str) and position == "all"):
            if len(position) != ndim:
                raise ValueError(f"position {position} needs one value per layer axis ({ndim})")
            plane = tuple(
                int(np.clip(round(float(position[axis])), 0, shape[axis] - 1))
                for axis in stack_axes
            )
        return cls(
            data,
            layer.name,
            bool(layer.rgb),
            spatial_axes,
            stack_axes,
            stack_shape,
            channel_axis,
            tuple(channels or ()),
            plane,
        )

    @property
    def plane_shape(self) -> tuple[int, int]:
        return tuple(int(self.data.shape[axis]) for axis in self.spatial_axes)

    @property
    def output_stack_shape(self) -> tuple[int, ...]:
        """The stack shape of the result: the full stack, or ones for a single plane."""
        return self.stack_shape if self.plane is None else (1,) * len(self.stack_axes)

    def indices(self) -> list[tuple[int, ...]]:
        """Stack indices of the planes to segment."""
        if self.plane is not None:
            return [self.plane]
        return list(itertools.product(*(range(n) for n in self.stack_shape)))

    def read(self, index: tuple[int, ...]) -> np.ndarray:
        """One plane as (H, W), (H, W, 3) or (H, W, 4) numpy, reading only that plane."""
        key = [slice(None)] * self.data.ndim
        for axis, i in zip(self.stack_axes, index, strict=True):
            key[axis] = i
        plane = np.asarray(self.data[tuple(key)])
        if self.channel_axis is None:
            return plane
        # The channel axis keeps its order among the axes that were not indexed.
        position = sorted((self.channel_axis, *self.spatial_axes)).index(self.channel_axis)
        picked = np.moveaxis(plane, position, -1)[..., list(self.channels)]
        if picked.shape[-1] == 1:
            return picked[..., 0]
        if picked.shape[-1] == 2:
            return np.concatenate([picked, np.zeros_like(picked[..., :1])], axis=-1)
        return picked

    def describe(self) -> dict:
        """What the result's `parameters` record about the input."""
        return {
            "source_layer": self.name,
            "channel_axis": self.channel_axis,
            "channels": list(self.channels) if self.channel_axis is not None else None,
            "planes": "all" if self.plane is None else "current",
            "plane_offset": list(self.plane or (0,) * len(self.stack_axes)),
        }


def current_position(viewer, layer) -> tuple[float, ...]:
    """The viewer's current point in the layer's data coordinates."""
    return tuple(layer.world_to_data(viewer.dims.point))


def auto_probability_downsample(
    n_classes: int, n_planes: int, height: int, width: int, budget_mb: float | None = None
) -> int:
    """Deprecated: use `Request.probability_factor` (the factor the runs themselves use)."""
    import warnings

    warnings.warn(
        "auto_probability_downsample is deprecated; use Request.probability_factor",
        DeprecationWarning,
        stacklevel=2,
    )
    budget = PROBABILITY_BUDGET_BYTES if budget_mb is None else budget_mb * 2**20
    return probability_downsample_for_budget(n_classes, height, width, budget, n_planes)


def segment_planes(
    segmenter,
    planes: LayerPlanes,
    request,
    *,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
):
    """Segment every selected plane with `segmenter.segment(plane, request)` and stack them.

    request: an engine `Request` (from `prepare`). Returns a `SegmentationResult` whose labels
    are (*stack, H, W) and probabilities (C, *stack, H', W'), stack being
    `planes.output_stack_shape` (empty for a 2D image, when it is exactly the engine's
    result). With probability_downsample "auto" one factor serves every plane, chosen so that
    all planes together fit the request's budget. `parameters` adds what
    `LayerPlanes.describe` records.
    """
    from dataclasses import replace

    from .engine.result import SegmentationResult

    indices = planes.indices()
    height, width = planes.plane_shape
    factor = request.probability_factor(height, width, len(indices))
    plane_request = replace(request, probability_downsample=factor)
    stack_shape = planes.output_stack_shape
    labels = probabilities = first = None
    timings: dict[str, float] = {}
    for count, index in enumerate(indices):
        report = progress
        if progress is not None and len(indices) > 1:

            def report(done, total, stage, _plane=count + 1):
                progress(done, total, f"plane {_plane}/{len(indices)}: {stage}")

        result = segmenter.segment(
            planes.read(index), plane_request, progress=report, cancel=cancel
        )
        if first is None:
            first = result
            labels = np.empty((*stack_shape, height, width), result.labels.dtype)
            probabilities = np.empty(
                (result.n_classes, *stack_shape, *result.probabilities.shape[1:]), np.float32
            )
        where = index if planes.plane is None else (0,) * len(stack_shape)
        labels[where] = result.labels
        probabilities[(slice(None), *where)] = result.probabilities
        for stage, seconds in result.timings.items():
            timings[stage] = timings.get(stage, 0.0) + seconds
    return SegmentationResult(
        labels=labels,
        probabilities=probabilities,
        class_names=first.class_names,
        background=first.background,
        parameters={
            **first.parameters,
            **planes.describe(),
            "n_planes": len(indices),
            "probability_budget_mb": request.record_budget(),
        },
        timings=timings,
        probability_factor=factor,
    )


def _replaceable(viewer, source_name: str):
    """The previous result of `source_name` that re-running may replace, or None: a labels
    layer made by this plugin in this session, still named `<image> labels` or
    `<image> labels [n]`, and not edited since (its data still matches its checksum)."""
    pattern = re.compile(re.escape(labels_name(source_name)) + r"( \[\d+\])?")
    for layer in viewer.layers:
        info = layer.metadata.get("itaclip", {})
        if (
            info.get("role") == "labels"
            and pattern.fullmatch(layer.name)
            and info.get("labels_checksum") == checksum(layer.data)
        ):
            return layer
    return None


def _free_suffix(viewer, names: list[str]) -> str:
    taken = {layer.name for layer in viewer.layers}
    if not taken.intersection(names):
        return ""
    number = 1
    while taken.intersection(f"{name} [{number}]" for name in names):
        number += 1
    return f" [{number}]"


def _matches_in_place(old_layers: list, layer_data: list) -> bool:
    """Whether the new layers match the previous result's one to one (same names and
    dimensions), so that their data can be put into the old layers."""
    by_name = {layer.name: layer for layer in old_layers}
    return sorted(by_name) == sorted(kwargs["name"] for _, kwargs, _ in layer_data) and all(
        by_name[kwargs["name"]].ndim == np.ndim(data) for data, kwargs, _ in layer_data
    )


def _update_in_place(old_layers: list, layer_data: list):
    """Put new data into the previous result's layers, keeping the user's display settings."""
    by_name = {layer.name: layer for layer in old_layers}
    updated = []
    for data, kwargs, _ in layer_data:
        layer = by_name[kwargs["name"]]
        layer.data = data
        for key in ("scale", "translate", "rotate", "shear", "affine", "metadata", "features"):
            if key in kwargs:
                setattr(layer, key, kwargs[key])
        updated.append(layer)
        yield
    return updated


def _renamed(layer_data: list, suffix: str) -> list:
    return [
        (data, {**kwargs, "name": kwargs["name"] + suffix}, kind)
        for data, kwargs, kind in layer_data
    ]


def _add(viewer, layer_data: list):
    from napari.layers import Layer

    added = []
    for item in layer_data:
        # Building a layer and showing it are each a noticeable pause on a software-rendered
        # display: separate steps, so the event loop runs in between.
        layer = Layer.create(*item)
        yield
        added.append(viewer.add_layer(layer))
        yield
    return added


def _replace(viewer, previous, layer_data: list):
    """Replace the layers of the result `previous` belongs to, keeping its name suffix."""
    layer_data = _renamed(layer_data, previous.name.removeprefix(layer_data[-1][1]["name"]))
    result_id = previous.metadata["itaclip"]["result_id"]
    old = [
        layer
        for layer in viewer.layers
        if layer.metadata.get("itaclip", {}).get("result_id") == result_id
    ]
    if _matches_in_place(old, layer_data):
        return (yield from _update_in_place(old, layer_data))
    position = min(viewer.layers.index(layer) for layer in old)
    for layer in old:
        viewer.layers.remove(layer)
    yield
    added = yield from _add(viewer, layer_data)
    viewer.layers.move_multiple([viewer.layers.index(layer) for layer in added], position)
    return added


def add_result_layers_in_steps(viewer, result, source_layer):
    """`add_result_layers` as a generator that yields between layers and returns the layers
    (StopIteration.value), so a GUI can let its event loop run between the steps."""
    from napari.utils.notifications import show_info

    layer_data = result_to_layer_data(result, source_layer)
    previous = _replaceable(viewer, source_layer.name)
    if previous is not None:
        return (yield from _replace(viewer, previous, layer_data))
    name = layer_data[-1][1]["name"]
    suffix = _free_suffix(viewer, [kwargs["name"] for _, kwargs, _ in layer_data])
    if suffix:
        show_info(
            f"Kept the existing {name!r} (edited, loaded or not made by ITACLIP); the new "
            f"result is named {name + suffix!r}."
        )
    return (yield from _add(viewer, _renamed(layer_data, suffix)))


def add_result_layers(viewer, result, source_layer) -> list:
    """Add a result's layers above the image (or update the previous ones), and return them.

    Re-running on the same image: if `<image> labels` (or `<image> labels [n]`) is an unedited
    result of this session, it and its probability layers are replaced: updated in place
    (display settings kept) when the new result has the same layers, else removed and the new
    layers put where they were. If it was edited (or loaded from a file, or is not ours), it is
    kept untouched and the new layers get a numbered name, `<image> labels [1]`,
    `<image> p(cat) [1]`, ...
    """
    steps = add_result_layers_in_steps(viewer, result, source_layer)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


class _NapariProgress:
    """Adapts the engine's progress(done, total, stage) to a napari progress bar."""

    def __init__(self):
        from napari.utils import progress

        self.bar = progress(total=0)

    def __call__(self, done: int, total: int, stage: str) -> None:
        self.bar.total = total
        self.bar.n = done
        self.bar.set_description(stage)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def segment_layer(
    viewer,
    layer,
    classes,
    *,
    segmenter=None,
    progress: bool = True,
    planes: str = "all",
    channel_axis: int | None = None,
    channels=None,
    model: str = DEFAULT_MODEL,
    pretrained=DEFAULT_PRETRAINED,
    device: str = "auto",
    precision: str = "auto",
    **options,
) -> list:
    """Segment an image layer of `viewer` and add the result layers; return them.

    layer: an Image layer or its name. classes: as for `ITACLIP.segment` (list, text block,
    file or built-in set name). segmenter: an `ITACLIP` to reuse; else one is made from model,
    pretrained (tag or weights file), device and precision. progress: show a napari progress
    bar. planes: "all" (every plane of a stack, one stacked output) or "current" (the plane the
    viewer shows). channel_axis, channels: map up to 3 channels of a multichannel layer to RGB.
    options: preset, aux_text, probability_downsample (None = automatic: within
    probability_budget_mb, default 512 MiB, over all planes together) and any preset
    parameter (short_side, stride, ...). Runs synchronously, in the calling thread.
    """
    if isinstance(layer, str):
        if layer not in viewer.layers:
            raise ValueError(f"no layer named {layer!r} in the viewer")
        layer = viewer.layers[layer]
    if planes == "all":
        position = "all"
    elif planes == "current":
        position = current_position(viewer, layer)
    else:
        raise ValueError(f"planes must be 'all' or 'current', got {planes!r}")
    source = LayerPlanes.from_layer(
        layer, channel_axis=channel_axis, channels=channels, position=position
    )
    from .engine.request import prepare

    request = prepare(classes, **options)  # a bad class list fails before any model loads
    if segmenter is None:
        from .engine.segmenter import ITACLIP

        segmenter = ITACLIP(model, pretrained, device, precision)
    report = _NapariProgress() if progress else None
    try:
        result = segment_planes(segmenter, source, request, progress=report)
    finally:
        if report is not None:
            report.close()
    return add_result_layers(viewer, result, layer)

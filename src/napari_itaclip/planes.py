"""The planes of an image (a napari layer or a plain array) and their segmentation, napari-free.

- `LayerPlanes` says which planes of an image are segmented and reads them one at a time (a
  dask- or zarr-backed image is never read whole): `from_layer` for a napari Image layer
  (duck-typed, napari is never imported), `from_array` for an array such as a (Z, Y, X) stack.
- `segment_planes` runs `ITACLIP.segment` on each plane and stacks the results; it touches no
  Qt, so the widget runs it in a worker thread, and the command line can use it for stacks.
  `PlaneStack` assembles the per-plane results (a cluster fills it as planes finish);
  `plane_results` yields them one at a time, for a writer that keeps no stack in memory.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .engine import SegmentationResult

MAX_CHANNELS = 3


@dataclass(frozen=True)
class LayerPlanes:
    """The planes of an image layer or array to segment, read lazily one at a time.

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
        """The planes of a napari Image layer (or anything with its `data`, `multiscale`,
        `rgb`, `ndim` and `name`; napari is not imported).

        position: "all" for every plane, or a point in the layer's data coordinates (one
        value per layer axis, e.g. from `current_position`) whose stack indices pick one plane.
        channel_axis, channels: a layer axis holding channels and up to 3 of its indices, mapped
        to R, G, B (one channel is used as grey, two fill R and G).
        """
        if not hasattr(layer, "rgb"):  # Labels, Points, ... layers have no `rgb`
            raise TypeError(f"layer {layer.name!r} is a {type(layer).__name__} layer, not an Image")
        data = layer.data[0] if layer.multiscale else layer.data
        return cls._select(
            data, layer.name, bool(layer.rgb), layer.ndim, channel_axis, channels, position
        )

    @classmethod
    def from_array(
        cls,
        array,
        *,
        rgb: bool | None = None,
        channel_axis: int | None = None,
        channels=None,
        name: str = "image",
        position="all",
    ) -> LayerPlanes:
        """The planes of a plain array (numpy, dask, zarr: read one plane at a time), e.g. a
        (Z, Y, X) or (T, Y, X, 3) stack read from a file.

        rgb: whether the last axis holds colour; None guesses as napari does (a last axis of
        3 or 4 in an array of 3 or more dimensions, when no channel axis is given).
        Other arguments as for `from_layer`, the array's axes being the layer's.
        """
        shape = tuple(int(size) for size in array.shape)
        if rgb is None:
            rgb = channel_axis is None and len(shape) >= 3 and shape[-1] in (3, 4)
        if rgb and (len(shape) < 3 or shape[-1] not in (3, 4)):
            raise ValueError(f"{name!r} of shape {shape} has no last axis of 3 or 4 colours")
        ndim = len(shape) - 1 if rgb else len(shape)
        return cls._select(array, name, bool(rgb), ndim, channel_axis, channels, position)

    @classmethod
    def _select(cls, data, name, rgb, ndim, channel_axis, channels, position) -> LayerPlanes:
        """Check the channel pick and the position against data with `ndim` image axes."""
        shape = tuple(int(s) for s in data.shape[:ndim])
        if channel_axis is not None:
            if rgb:
                raise ValueError(f"{name!r} is RGB; it has no channel axis to pick from")
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
            raise ValueError(f"{name!r} has no 2D image plane (shape {data.shape})")
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
            name,
            rgb,
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
    """The viewer's current point in the layer's data coordinates (a `position` for
    `LayerPlanes.from_layer`)."""
    return tuple(layer.world_to_data(viewer.dims.point))


def plane_request(planes: LayerPlanes, request):
    """The request every plane of `planes` is segmented with: with probability_downsample
    "auto", the one factor that makes all planes' probabilities together fit the budget."""
    height, width = planes.plane_shape
    factor = request.probability_factor(height, width, len(planes.indices()))
    return replace(request, probability_downsample=factor)


class PlaneStack:
    """The stacked result of `segment_planes`, filled one plane result at a time in any order
    (a cluster returns planes as they finish; `segment_planes` adds them in order).

    `plane_request` is what every plane is segmented with: with probability_downsample "auto"
    one factor serves every plane, chosen so that all planes together fit the request's
    budget.
    """

    def __init__(self, planes: LayerPlanes, request):
        self.planes = planes
        self.indices = planes.indices()
        self.request = request
        self.plane_request = plane_request(planes, request)
        self.factor = self.plane_request.probability_downsample
        self._labels = self._probabilities = self._first = None
        self._timings: dict[str, float] = {}
        self._added = 0

    def add(self, index: tuple[int, ...], result) -> None:
        """Put the engine's result for the plane at stack `index` in its place."""
        stack_shape = self.planes.output_stack_shape
        if self._first is None:
            self._first = result
            self._labels = np.empty((*stack_shape, *self.planes.plane_shape), result.labels.dtype)
            self._probabilities = np.empty(
                (result.n_classes, *stack_shape, *result.probabilities.shape[1:]), np.float32
            )
        where = index if self.planes.plane is None else (0,) * len(stack_shape)
        self._labels[where] = result.labels
        self._probabilities[(slice(None), *where)] = result.probabilities
        for stage, seconds in result.timings.items():
            self._timings[stage] = self._timings.get(stage, 0.0) + seconds
        self._added += 1

    def result(self) -> SegmentationResult:
        if self._added != len(self.indices):
            raise ValueError(f"{self._added} of {len(self.indices)} planes were segmented")
        return SegmentationResult(
            labels=self._labels,
            probabilities=self._probabilities,
            class_names=self._first.class_names,
            background=self._first.background,
            parameters={
                **self._first.parameters,
                **self.planes.describe(),
                "n_planes": len(self.indices),
                "probability_budget_mb": self.request.record_budget(),
            },
            timings=self._timings,
            probability_factor=self.factor,
        )


def segment_planes(
    segmenter,
    planes: LayerPlanes,
    request,
    *,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    examples=None,
    preview: Callable[[SegmentationResult], None] | None = None,
):
    """Segment every selected plane with `segmenter.segment(plane, request)` and stack them.

    request: an engine `Request` (from `prepare`). Returns a `SegmentationResult` whose labels
    are (*stack, H, W) and probabilities (C, *stack, H', W'), stack being
    `planes.output_stack_shape` (empty for a 2D image, when it is exactly the engine's
    result). With probability_downsample "auto" one factor serves every plane, chosen so that
    all planes together fit the request's budget. `parameters` adds what
    `LayerPlanes.describe` records.
    examples: (*output stack, H, W) class ids, -1 where there is no example: each plane's
    examples (`ITACLIP.segment`'s), or None; a plane without any uses the request's bank.
    preview: preview(stacked preview result) for a single-plane run (`ITACLIP.segment`'s).
    """
    stack = PlaneStack(planes, request)
    plane_examples = _plane_examples(planes, examples)
    single = len(stack.indices) == 1

    def stacked_preview(result):
        shown = PlaneStack(planes, request)
        shown.add(stack.indices[0], result)
        preview(shown.result())

    def plane_options(count):
        extra = {}
        if plane_examples is not None and (plane_examples[count] >= 0).any():
            extra["examples"] = plane_examples[count]
        if preview is not None and single:
            extra["preview"] = stacked_preview
        return extra

    for index, result in plane_results(
        segmenter,
        planes,
        stack.plane_request,
        stack.indices,
        progress=progress,
        cancel=cancel,
        plane_options=plane_options,
    ):
        stack.add(index, result)
    return stack.result()


def plane_results(
    segmenter,
    planes: LayerPlanes,
    plane_request,
    indices: list[tuple[int, ...]],
    *,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    plane_options: Callable[[int], dict] | None = None,
) -> Iterator[tuple[tuple[int, ...], SegmentationResult]]:
    """(stack index, engine result) of each plane of `indices`, in order, segmented as it is
    asked for: only one plane's result is alive at a time unless the caller keeps them.

    plane_request: from `plane_request(planes, request)`, so that the planes come out as in
    the whole stack's run. progress: as for `segment_planes` (stages prefixed with
    "plane k/n" when there are several). plane_options(k): more `ITACLIP.segment` keywords
    for the k-th plane of `indices`.
    """
    for count, index in enumerate(indices):
        report = progress
        if progress is not None and len(indices) > 1:

            def report(done, total, stage, _plane=count + 1):
                progress(done, total, f"plane {_plane}/{len(indices)}: {stage}")

        extra = plane_options(count) if plane_options is not None else {}
        yield (
            index,
            segmenter.segment(
                planes.read(index), plane_request, progress=report, cancel=cancel, **extra
            ),
        )


def _plane_examples(planes: LayerPlanes, examples) -> np.ndarray | None:
    """(n planes, H, W) examples in the order of `planes.indices()` (from (*stack, H, W))."""
    if examples is None:
        return None
    expected = (*planes.output_stack_shape, *planes.plane_shape)
    array = np.asarray(examples)
    if array.shape != expected:
        raise ValueError(
            f"examples of shape {array.shape} do not fit {planes.name!r}: expected {expected} "
            "(the output stack and the image plane)"
        )
    return array.reshape(-1, *planes.plane_shape)

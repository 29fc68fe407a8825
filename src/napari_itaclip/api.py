"""The notebook API: `segment_layer` segments a napari layer and adds the result layers.

It joins the napari-free plane handling (`planes.LayerPlanes`, `planes.segment_planes`), the
shared segmenter (`segmenters.get_segmenter`) and the viewer's layer policy
(`viewer.add_result_layers`), synchronously. Those names are importable from here too, as
before they moved to their own modules.

napari is imported inside functions only, so importing this module stays cheap.
"""

from __future__ import annotations

import os

from ._run_progress import ActivityBar
from .corrections import pixel_examples
from .engine import DEFAULT_MODEL, DEFAULT_PRETRAINED, prepare
from .planes import MAX_CHANNELS, LayerPlanes, current_position, segment_planes
from .segmenters import get_segmenter
from .viewer import add_result_layers, add_result_layers_in_steps

__all__ = [
    "MAX_CHANNELS",
    "LayerPlanes",
    "add_result_layers",
    "add_result_layers_in_steps",
    "auto_probability_downsample",
    "current_position",
    "segment_layer",
    "segment_planes",
]


def auto_probability_downsample(
    n_classes: int, n_planes: int, height: int, width: int, budget_mb: float | None = None
) -> int:
    """Deprecated: use `Request.probability_factor` (the factor the runs themselves use)."""
    import warnings
    from dataclasses import replace

    from .engine import prepare

    warnings.warn(
        "auto_probability_downsample is deprecated; use Request.probability_factor",
        DeprecationWarning,
        stacklevel=2,
    )
    # Any class list of the right length: only the count matters for the factor.
    request = prepare([f"class {i}" for i in range(n_classes)], background=False)
    if budget_mb is not None:
        request = replace(request, probability_budget_mb=budget_mb)
    return request.probability_factor(height, width, n_planes)


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
    examples=None,
    **options,
) -> list:
    """Segment an image layer of `viewer` and add the result layers; return them.

    layer: an Image layer or its name. classes: as for `ITACLIP.segment` (list, text block,
    file or built-in set name). segmenter: an `ITACLIP` to use; else the shared one for model,
    pretrained (tag or weights file), device and precision (`segmenters.get_segmenter`: loaded
    once, reused by later calls and by the dock widget). progress: show a napari progress
    bar (the activity dock in a viewer: one bar for the whole run, including a first download
    of the weights; its Cancel button stops the run, which then raises `Cancelled`).
    planes: "all" (every plane of a stack, one stacked output) or "current" (the plane the
    viewer shows). channel_axis, channels: map up to 3 channels of a multichannel layer to RGB.
    options: preset, aux_text, probability_downsample (None = automatic: within
    probability_budget_mb, default 512 MiB, over all planes together) and any preset
    parameter (short_side, stride, ...). Runs synchronously, in the calling thread.
    examples: pixels you vouch for (docs/notebook.md, "Examples"): a Labels layer of strokes
    (value = class id + 1, 0 = none), a result's labels layer you corrected (the pixels changed
    since the run), or an array of class ids (-1 = none) shaped like the result (or like the
    whole stack for planes="current"); the result's labels equal them there. An
    `ExamplesBank` or its .npz path applies to every plane instead.
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
    from .engine import ExamplesBank

    bank = examples is None or isinstance(examples, str | os.PathLike | ExamplesBank)
    if bank:
        options["examples"] = examples
    request = prepare(classes, **options)  # a bad class list fails before any model loads
    pixels = None if bank else pixel_examples(examples, source, request)
    bar = ActivityBar() if progress else None
    try:
        if segmenter is None:
            segmenter = get_segmenter(
                model,
                pretrained,
                device,
                precision,
                loading=bar and (lambda: bar.loading(model, pretrained)),
                progress=bar,
            )
        result = segment_planes(
            segmenter,
            source,
            request,
            progress=bar,
            cancel=bar and bar.cancelled,
            examples=pixels,
        )
    finally:
        if bar is not None:
            bar.close()
    return add_result_layers(viewer, result, layer)

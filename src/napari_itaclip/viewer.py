"""Putting a result's layers into a napari viewer: where they go and when they replace others.

`add_result_layers` adds the layers of `layers.result_to_layer_data` above the image, replacing
the previous result of the same image only when it was made in this session and not edited;
`add_result_layers_in_steps` does the same one layer per step, so a GUI can let its event loop
run in between. napari is imported inside functions only.
"""

from __future__ import annotations

import re

import numpy as np

from .layers import checksum, labels_name, result_to_layer_data


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

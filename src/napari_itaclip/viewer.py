"""Putting a result's layers into a napari viewer: where they go and when they replace others.

`add_result_layers` adds the layers of `layers.result_to_layer_data` above the image, replacing
the previous result of the same image only when it was made in this session and not edited;
`add_result_layers_in_steps` does the same one layer per step, so a GUI can let its event loop
run in between. napari is imported inside functions only.

What a run shows: its labels layer over the image, and of its probability layers only the
one asked for (`show_probability`, a class name; by default none, so the image stays in
view). A new result set hides the older ones of the same image (they stay in the layer list);
a result updated in place keeps the display settings the user gave it, and the layer objects
(another class list refills the old probability layers), so a re-run on kept features costs
the GUI milliseconds. `apply_refinement` writes a refinement from the user's corrections into
its labels layer as one undo step. A fresh result's labels layer keeps what the engine wrote
(`metadata["itaclip_corrections"]`, `corrections.Corrections`) to tell the user's edits apart.
"""

from __future__ import annotations

import re

import numpy as np

from .corrections import METADATA_KEY as CORRECTIONS_KEY
from .corrections import Corrections
from .layers import checksum, labels_name, result_to_layer_data


def _info(layer) -> dict:
    return layer.metadata.get("itaclip", {})


def _replaceable(viewer, source_name: str):
    """The previous result of `source_name` that re-running may replace, or None: a labels
    layer made by this plugin in this session, still named `<image> labels` or
    `<image> labels [n]`, and not edited since (its data still matches its checksum)."""
    pattern = re.compile(re.escape(labels_name(source_name)) + r"( \[\d+\])?")
    for layer in viewer.layers:
        info = _info(layer)
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


def _same_dimensions(old_layers: list, layer_data: list) -> bool:
    """Whether every new layer has the dimensions of the previous result's layers, so that
    the old layer objects can take the new data."""
    return all(np.ndim(data) == old_layers[0].ndim for data, _, _ in layer_data)


REFILLED = ("scale", "translate", "rotate", "shear", "affine", "metadata", "features")


def _refill(layer, data, kwargs: dict, renamed: bool) -> None:
    """Put a new layer's data into an old layer object; a layer taken over from another class
    (`renamed`) also gets its name, colours and visibility."""
    layer.data = data
    for key in REFILLED:
        if key in kwargs:
            setattr(layer, key, kwargs[key])
    # a labels layer needs new colours only when the number of label ids changed
    more_labels = "features" in kwargs and set(layer.colormap.color_dict) != set(kwargs["colormap"])
    if renamed or more_labels:
        layer.colormap = kwargs["colormap"]
    if renamed:
        layer.name = kwargs["name"]
        layer.visible = kwargs["visible"]


def _update_in_place(viewer, old_layers: list, layer_data: list):
    """Put new data into the previous result's layers, keeping the user's display settings.

    A class no longer in the list gives its probability layer to a new class (building a
    layer costs far more GUI time than refilling one); only layers beyond the old count are
    built, and old ones left over are removed.
    """
    from napari.layers import Layer

    by_name = {layer.name: layer for layer in old_layers}
    names = {kwargs["name"] for _, kwargs, _ in layer_data}
    spare = [layer for layer in old_layers if layer.name not in names]
    labels = next(layer for layer in old_layers if _info(layer)["role"] == "labels")
    updated = []
    for data, kwargs, kind in layer_data:
        layer = by_name.get(kwargs["name"])
        if layer is None and spare:
            layer = spare.pop(0)
            _refill(layer, data, kwargs, renamed=True)
        elif layer is None:
            layer = Layer.create(data, kwargs, kind)
            yield
            viewer.layers.insert(viewer.layers.index(labels), layer)
        else:
            _refill(layer, data, kwargs, renamed=False)
        updated.append(layer)
        yield
    for layer in spare:
        viewer.layers.remove(layer)
    return updated


def _class_name(info: dict) -> str:
    return info["class_names"][info["class_id"]]


def _shown_as_asked(layer_data: list, show_probability: str | None) -> list:
    """The layer data with only the probability layer of `show_probability` visible."""
    shown = []
    for data, kwargs, kind in layer_data:
        info = kwargs["metadata"]["itaclip"]
        if info["role"] == "probability":
            kwargs = {**kwargs, "visible": _class_name(info) == show_probability}
        shown.append((data, kwargs, kind))
    return shown


def _hide_results_of(viewer, source_name: str) -> None:
    for layer in viewer.layers:
        info = _info(layer)
        if info.get("source") == source_name and info.get("role") in ("labels", "probability"):
            layer.visible = False


def show_probability(viewer, source_name: str, class_name: str | None) -> None:
    """Show the probability layer of `class_name` (None: none) of the newest result of
    `source_name` (its topmost labels layer), hiding that result's other probability layers."""
    labels = [
        layer
        for layer in viewer.layers
        if _info(layer).get("source") == source_name and _info(layer).get("role") == "labels"
    ]
    if not labels:
        return
    result_id = _info(labels[-1])["result_id"]
    for layer in viewer.layers:
        info = _info(layer)
        if info.get("result_id") == result_id and info.get("role") == "probability":
            layer.visible = _class_name(info) == class_name


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
    old = [layer for layer in viewer.layers if _info(layer).get("result_id") == result_id]
    if _same_dimensions(old, layer_data):
        return (yield from _update_in_place(viewer, old, layer_data))
    position = min(viewer.layers.index(layer) for layer in old)
    for layer in old:
        viewer.layers.remove(layer)
    yield
    added = yield from _add(viewer, layer_data)
    viewer.layers.move_multiple([viewer.layers.index(layer) for layer in added], position)
    return added


def add_result_layers_in_steps(viewer, result, source_layer, *, show_probability=None):
    """`add_result_layers` as a generator that yields between layers and returns the layers
    (StopIteration.value), so a GUI can let its event loop run between the steps."""
    from napari.utils.notifications import show_info

    layer_data = _shown_as_asked(result_to_layer_data(result, source_layer), show_probability)
    labels, kwargs, _ = layer_data[-1]
    if kwargs["metadata"]["itaclip"]["labels_checksum"]:  # as computed: edits can be told apart
        kwargs["metadata"][CORRECTIONS_KEY] = Corrections(labels)
    previous = _replaceable(viewer, source_layer.name)
    if previous is not None:
        return (yield from _replace(viewer, previous, layer_data))
    name = layer_data[-1][1]["name"]
    suffix = _free_suffix(viewer, [kwargs["name"] for _, kwargs, _ in layer_data])
    if suffix:
        show_info(f"ITACLIP: kept the edited {name!r}; new result {name + suffix!r}")
    _hide_results_of(viewer, source_layer.name)
    return (yield from _add(viewer, _renamed(layer_data, suffix)))


def apply_refinement(viewer, labels_layer, refinement, before: np.ndarray) -> int:
    """Write a `corrections.Refinement` into its labels layer as ONE step of the layer's undo
    history (`Labels.data_setitem`), put its probabilities into the result's probability
    layers, and record it in the layer's `Corrections`. Pixels painted while it ran (that
    differ from `before`, the labels it started from) stay as painted. Returns the number of
    pixels changed."""
    data = labels_layer.data
    changed = np.nonzero((refinement.labels != data) & (data == before))
    labels_layer.data_setitem(changed, refinement.labels[changed])
    probabilities = labels_layer.metadata["itaclip_probabilities"]
    for plane, maps in zip(refinement.planes, refinement.probabilities, strict=True):
        probabilities[(slice(None), *plane)] = maps  # the probability layers' data are views
    result_id = _info(labels_layer)["result_id"]
    for layer in viewer.layers:
        info = _info(layer)
        if info.get("result_id") == result_id and info.get("role") == "probability":
            layer.refresh()
    Corrections.of(labels_layer).add(refinement.origin, refinement.labels, refinement.examples)
    return len(changed[0])


def add_result_layers(viewer, result, source_layer, *, show_probability=None) -> list:
    """Add a result's layers above the image (or update the previous ones), and return them.

    Re-running on the same image: if `<image> labels` (or `<image> labels [n]`) is an unedited
    result of this session, it and its probability layers are replaced: updated in place
    (display settings kept) when the new result has the same layers, else removed and the new
    layers put where they were. If it was edited (or loaded from a file, or is not ours), it is
    kept untouched (and hidden, as every older result of the image) and the new layers get a
    numbered name, `<image> labels [1]`, `<image> p(cat) [1]`, ...
    show_probability: the class whose probability layer is shown (default: none).
    """
    steps = add_result_layers_in_steps(
        viewer, result, source_layer, show_probability=show_probability
    )
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value

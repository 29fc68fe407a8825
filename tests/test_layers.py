"""result_to_layer_data: layer kinds, names, label ids, colours, features, geometry, metadata.

No viewer: layers are built with `Layer.create`, as napari does from a reader's LayerData.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_itaclip.colors import class_colors, class_colors_uint8
from napari_itaclip.engine.result import SegmentationResult
from napari_itaclip.layers import ALL_PROBABILITY_LAYERS_UP_TO, result_to_layer_data


def make_result(class_names, background, shape=(6, 8), factor=1, parameters=None, seed=0):
    rng = np.random.default_rng(seed)
    n = len(class_names)
    labels = rng.integers(0, n, shape).astype(np.uint8 if n <= 256 else np.uint16)
    prob_shape = (*shape[:-2], -(-shape[-2] // factor), -(-shape[-1] // factor))
    probabilities = rng.random((n, *prob_shape)).astype(np.float32)
    return SegmentationResult(
        labels=labels,
        probabilities=probabilities,
        class_names=list(class_names),
        background=background,
        parameters={"preset": "test", **(parameters or {})},
        probability_factor=factor,
    )


def as_layers(layer_data):
    from napari.layers import Layer

    return [Layer.create(*item) for item in layer_data]


def by_name(layers):
    return {layer.name: layer for layer in layers}


def test_voc_palette_values():
    # PASCAL VOC colormap: 0 black, 1 (128,0,0), 2 (0,128,0), 3 (128,128,0), 15 person (192,128,128)
    palette = class_colors_uint8(21)
    assert palette[0].tolist() == [0, 0, 0]
    assert palette[1].tolist() == [128, 0, 0]
    assert palette[2].tolist() == [0, 128, 0]
    assert palette[3].tolist() == [128, 128, 0]
    assert palette[15].tolist() == [192, 128, 128]
    assert len({tuple(c) for c in class_colors_uint8(4096)}) == 4096
    assert np.all(class_colors(5)[:, 3] == 1)


def test_background_list_label_ids_names_and_features():
    result = make_result(["sky, wall", "cat", "dog"], background=True)
    data = result_to_layer_data(result)
    assert [kind for _, _, kind in data] == ["image", "image", "image", "labels"]
    layers = by_name(as_layers(data))
    labels = layers["ITACLIP labels"]
    # label id = class id; class 0 is shown as "background" whatever its first word
    np.testing.assert_array_equal(labels.data, result.labels)
    assert list(labels.features["class"]) == ["background", "cat", "dog"]
    assert list(labels.features["index"]) == [0, 1, 2]
    assert set(layers) == {
        "ITACLIP labels",
        "ITACLIP p(background)",
        "ITACLIP p(cat)",
        "ITACLIP p(dog)",
    }


def test_without_background_zero_is_unlabelled():
    result = make_result(["road", "car"], background=False)
    layers = by_name(as_layers(result_to_layer_data(result)))
    labels = layers["ITACLIP labels"]
    np.testing.assert_array_equal(labels.data, result.labels.astype(int) + 1)
    assert labels.data.min() >= 1
    assert list(labels.features["class"]) == ["unlabelled", "road", "car"]
    assert labels.metadata["itaclip"]["label_offset"] == 1
    assert "ITACLIP p(unlabelled)" not in layers


def test_label_ids_widen_to_uint16_when_needed():
    names = [f"class {i}" for i in range(256)]
    result = make_result(names, background=False)
    labels = result_to_layer_data(result)[-1][0]
    assert labels.dtype == np.uint16
    assert labels.max() == result.labels.max() + 1


def test_hover_shows_class_name():
    result = make_result(["background", "cat"], background=True)
    result.labels[:] = 1
    labels = by_name(as_layers(result_to_layer_data(result)))["ITACLIP labels"]
    status = labels.get_status((2, 3), world=True)
    assert "class: cat" in status["value"]


def test_colours_fixed_per_label_id_and_background_transparent():
    first = by_name(as_layers(result_to_layer_data(make_result(["bg", "a", "b"], True, seed=1))))
    second = by_name(as_layers(result_to_layer_data(make_result(["bg", "a", "b"], True, seed=2))))
    ids = np.arange(3)
    colours = first["ITACLIP labels"].colormap.map(ids)
    np.testing.assert_allclose(colours, second["ITACLIP labels"].colormap.map(ids))
    np.testing.assert_allclose(colours[0], [0, 0, 0, 0])
    np.testing.assert_allclose(colours[1:], class_colors(3)[1:], atol=1e-6)


def test_probability_layers_contrast_visibility_and_colormap():
    result = make_result(["background", "a", "b", "c", "d"], background=True)
    layers = by_name(as_layers(result_to_layer_data(result)))
    visible = {name for name, layer in layers.items() if layer.visible}
    # background hidden, the first three foreground classes visible, the rest hidden
    assert visible == {"ITACLIP labels", "ITACLIP p(a)", "ITACLIP p(b)", "ITACLIP p(c)"}
    for name in ("a", "b", "c", "d", "background"):
        layer = layers[f"ITACLIP p({name})"]
        assert tuple(layer.contrast_limits) == (0.0, 1.0)
        assert layer.data.dtype == np.float32
    np.testing.assert_array_equal(layers["ITACLIP p(c)"].data, result.probabilities[3])
    # the colormap ends at the class colour (brightened), starting from black
    top = layers["ITACLIP p(a)"].colormap.map(np.array([1.0]))[0]
    np.testing.assert_allclose(top[:3], [1, 0, 0])


def test_long_class_lists_get_layers_for_present_classes_only():
    names = ["background", *(f"c{i}" for i in range(ALL_PROBABILITY_LAYERS_UP_TO + 5))]
    result = make_result(names, background=True)
    result.labels[:] = 0
    result.labels[0, :3] = [3, 7, 7]
    probability_names = {
        kwargs["name"] for _, kwargs, kind in result_to_layer_data(result) if kind == "image"
    }
    assert probability_names == {"ITACLIP p(background)", "ITACLIP p(c2)", "ITACLIP p(c6)"}


def test_metadata_holds_class_names_and_parameters():
    result = make_result(["background", "cat"], True, parameters={"short_side": 336})
    labels = by_name(as_layers(result_to_layer_data(result)))["ITACLIP labels"]
    info = labels.metadata["itaclip"]
    assert info["class_names"] == ["background", "cat"]
    assert info["parameters"]["short_side"] == 336
    assert info["background"] is True
    assert labels.metadata["itaclip_probabilities"] is result.probabilities


def image_layer(shape, **kwargs):
    from napari.layers import Image

    return Image(np.zeros(shape, np.uint8), **kwargs)


def test_scale_translate_affine_copied_from_source():
    affine = np.array([[1, 0.2, 5], [0, 1, -3], [0, 0, 1]])
    source = image_layer((6, 8), scale=(2, 3), translate=(10, 20), affine=affine, name="cells")
    layers = by_name(as_layers(result_to_layer_data(make_result(["bg", "a"], True), source)))
    labels = layers["cells labels"]
    np.testing.assert_allclose(labels.scale, (2, 3))
    np.testing.assert_allclose(labels.translate, (10, 20))
    np.testing.assert_allclose(labels.affine.affine_matrix, affine)
    np.testing.assert_allclose(layers["cells p(a)"].scale, (2, 3))


@pytest.mark.parametrize("rotate", [0, 30])
def test_downsampled_probabilities_sit_on_their_block(rotate):
    factor = 4
    source = image_layer((16, 24), scale=(2, 3), translate=(10, 20), rotate=rotate, name="big")
    result = make_result(["bg", "a"], True, shape=(16, 24), factor=factor)
    layers = by_name(as_layers(result_to_layer_data(result, source)))
    labels, prob = layers["big labels"], layers["big p(a)"]
    assert prob.data.shape == (4, 6)  # kept small, never upsampled
    if rotate == 0:
        np.testing.assert_allclose(prob.scale, (8, 12))
        np.testing.assert_allclose(prob.translate, (10 + 1.5 * 2, 20 + 1.5 * 3))
    # The centre of probability pixel (i, j) is the centre of the f x f block it averages.
    for i, j in [(0, 0), (2, 5)]:
        block_centre = (factor * i + (factor - 1) / 2, factor * j + (factor - 1) / 2)
        np.testing.assert_allclose(prob.data_to_world((i, j)), labels.data_to_world(block_centre))


def test_channel_axis_dropped_and_plane_placed():
    source = image_layer((5, 3, 6, 8), scale=(4, 1, 2, 3), translate=(10, 0, 1, 2), name="stack")
    # one plane (z=2) of a (Z, C, Y, X) layer, channels mapped to RGB from axis 1
    result = make_result(
        ["bg", "a"], True, shape=(1, 6, 8), parameters={"channel_axis": 1, "plane_offset": [2]}
    )
    labels = by_name(as_layers(result_to_layer_data(result, source)))["stack labels"]
    np.testing.assert_allclose(labels.scale, (4, 2, 3))
    np.testing.assert_allclose(labels.translate, (10 + 2 * 4, 1, 2))
    assert labels.data.shape == (1, 6, 8)

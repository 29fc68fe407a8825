"""Result bundles (`*.itaclip`, formerly `*.itaclip.npz`): save/load, the napari reader and writer, round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_itaclip._reader import get_reader
from napari_itaclip._writer import write_labels
from napari_itaclip.bundle import check_bundle, load_bundle, save_bundle
from napari_itaclip.colors import class_colors
from napari_itaclip.layers import result_to_layer_data
from test_layers import make_result


def test_save_load_round_trip(tmp_path):
    result = make_result(["road", "car", "tree"], background=False, shape=(2, 9, 7), factor=2)
    path = save_bundle(tmp_path / "scene", result, geometry={"scale": [1, 2, 3]}, name="scene")
    assert path.name == "scene.itaclip"
    bundle = load_bundle(path)
    # stored labels are label ids: class id + 1 without background
    np.testing.assert_array_equal(bundle.label_image, result.labels + 1)
    np.testing.assert_array_equal(bundle.probabilities, result.probabilities)
    assert bundle.probabilities.shape == (3, 2, 5, 4)
    assert bundle.class_names == ["road", "car", "tree"]
    assert bundle.background is False
    assert bundle.probability_factor == 2
    assert bundle.parameters == result.parameters
    assert bundle.geometry == {"scale": [1, 2, 3]}
    assert bundle.name == "scene"
    np.testing.assert_allclose(bundle.colors, class_colors(4))


def test_the_file_is_plain_npz_with_json_entries(tmp_path):
    path = save_bundle(tmp_path / "a.itaclip.npz", make_result(["bg", "a"], True))
    assert path.name == "a.itaclip"  # the legacy name asked for: the new suffix is written
    with np.load(path, allow_pickle=False) as npz:
        assert set(npz.files) == {
            "labels",
            "probabilities",
            "class_names",
            "colors",
            "parameters",
            "meta",
        }
        meta = json.loads(str(npz["meta"]))
    assert meta["format"] == "napari-itaclip result bundle"
    assert meta["version"] == 1
    assert meta["label_offset"] == 0


def test_save_rejects_labels_outside_the_class_ids(tmp_path):
    result = make_result(["bg", "a"], True)
    with pytest.raises(ValueError, match="id 5"):
        save_bundle(tmp_path / "x", result, labels=np.full(result.labels.shape, 5, np.uint8))
    with pytest.raises(ValueError, match="shape"):
        save_bundle(tmp_path / "x", result, labels=np.zeros((2, 2), np.uint8))


def test_reader_returns_none_for_files_it_does_not_own(tmp_path):
    other = tmp_path / "other.npz"
    np.savez(other, labels=np.zeros((3, 3)))
    assert get_reader(str(other)) is None
    for suffix in (".itaclip", ".itaclip.npz"):
        impostor = tmp_path / f"impostor{suffix}"
        with impostor.open("wb") as file:
            np.savez(file, labels=np.zeros((3, 3)))
        assert get_reader(str(impostor)) is None
        garbage = tmp_path / f"garbage{suffix}"
        garbage.write_bytes(b"not a zip file")
        assert get_reader(str(garbage)) is None
    assert get_reader(str(tmp_path / "missing.itaclip")) is None
    assert get_reader([str(other), str(impostor)]) is None


def test_reader_rejects_arrays_that_do_not_match(tmp_path):
    result = make_result(["bg", "a", "b"], True)
    path = save_bundle(tmp_path / "good", result)
    assert get_reader(str(path)) is not None
    with np.load(path, allow_pickle=False) as npz:
        entries = dict(npz)
    entries["probabilities"] = entries["probabilities"][:2]  # 2 maps for 3 classes
    bad = tmp_path / "bad.itaclip.npz"
    np.savez_compressed(bad, **entries)
    with pytest.raises(ValueError, match="probabilities have shape"):
        check_bundle(bad)
    assert get_reader(str(bad)) is None


def labels_layer_of(result, source=None):
    from napari.layers import Layer

    return Layer.create(*result_to_layer_data(result, source)[-1])


def test_writer_saves_corrections_and_reader_restores_layers(tmp_path):
    from napari.layers import Image, Layer

    source = Image(
        np.zeros((6, 8, 3), np.uint8), rgb=True, name="photo", scale=(2, 3), translate=(5, 7)
    )
    result = make_result(["background", "cat", "dog"], True, factor=2)
    original = result.labels.copy()
    labels = labels_layer_of(result, source)
    labels.data[0, :4] = 2  # the user's correction
    data, meta, kind = labels.as_layer_data_tuple()
    assert kind == "labels"
    [written] = write_labels(str(tmp_path / "photo"), data, meta)
    assert written.endswith("photo.itaclip")

    reader = get_reader(written)
    assert reader is not None
    layers = {layer.name: layer for layer in (Layer.create(*item) for item in reader(written))}
    assert set(layers) == {"photo labels", "photo p(background)", "photo p(cat)", "photo p(dog)"}
    restored = layers["photo labels"]
    assert restored.data[0, :4].tolist() == [2, 2, 2, 2]
    np.testing.assert_array_equal(restored.data[1:], original[1:])
    np.testing.assert_allclose(restored.scale, (2, 3))
    np.testing.assert_allclose(restored.translate, (5, 7))
    np.testing.assert_allclose(
        restored.colormap.map(np.arange(3)), labels.colormap.map(np.arange(3))
    )
    assert list(restored.features["class"]) == ["background", "cat", "dog"]
    assert restored.metadata["itaclip"]["parameters"] == result.parameters
    prob = layers["photo p(dog)"]
    np.testing.assert_array_equal(prob.data, result.probabilities[2])
    np.testing.assert_allclose(prob.scale, (4, 6))  # factor 2 kept on reading


def test_writer_refuses_labels_not_made_here(tmp_path):
    from napari.layers import Labels

    data, meta, _ = Labels(np.zeros((4, 4), np.uint8), name="manual").as_layer_data_tuple()
    with pytest.raises(ValueError, match="not made by napari-itaclip"):
        write_labels(str(tmp_path / "manual.itaclip"), data, meta)


def viewer_with_a_result(make_napari_viewer):
    from napari.layers import Layer

    viewer = make_napari_viewer()
    source = viewer.add_image(np.zeros((6, 8), np.uint8), name="cells", scale=(0.5, 0.5))
    result = make_result(["background", "nucleus"], True)
    for item in result_to_layer_data(result, source):
        viewer.add_layer(Layer.create(*item))
    viewer.layers["cells labels"].data[2, 2] = 0
    viewer.layers.selection = {viewer.layers["cells labels"]}
    return viewer


@pytest.mark.gui
@pytest.mark.parametrize("how", ["drag and drop", "viewer.open(plugin=None)"])
def test_viewer_saves_and_opens_a_bundle_without_naming_the_plugin(
    make_napari_viewer, tmp_path, monkeypatch, how
):
    """Drag and drop (and File > Open) read with no plugin named: only this plugin may claim
    the file, else napari asks which reader (and napari's .npz reader fails on a bundle)."""
    import napari._qt.qt_viewer

    def reader_dialog(*args, **kwargs):
        raise AssertionError("napari asked which reader to use")

    monkeypatch.setattr(napari._qt.qt_viewer, "handle_gui_reading", reader_dialog)
    viewer = viewer_with_a_result(make_napari_viewer)
    path = str(tmp_path / "cells.itaclip")
    assert viewer.layers.save(path, selected=True) == [path]  # the only writer of .itaclip
    viewer.layers.clear()
    if how == "drag and drop":
        viewer.window._qt_viewer._qt_open([path], stack=False)  # what dropEvent calls
    else:
        viewer.open(path, plugin=None)
    assert [layer.name for layer in viewer.layers] == [
        "cells p(background)",
        "cells p(nucleus)",
        "cells labels",
    ]
    assert viewer.layers["cells labels"].data[2, 2] == 0


@pytest.mark.gui
def test_viewer_save_and_open_through_the_plugin(make_napari_viewer, tmp_path):
    viewer = viewer_with_a_result(make_napari_viewer)
    path = str(tmp_path / "cells.itaclip")
    saved = viewer.layers.save(path, selected=True, plugin="napari-itaclip")
    assert saved == [path]
    viewer.layers.clear()
    opened = viewer.open(path, plugin="napari-itaclip")
    assert [layer.name for layer in opened] == [
        "cells p(background)",
        "cells p(nucleus)",
        "cells labels",
    ]
    assert viewer.layers["cells labels"].data[2, 2] == 0
    np.testing.assert_allclose(viewer.layers["cells labels"].scale, (0.5, 0.5))


def test_a_version_1_file_written_before_the_record_still_reads(tmp_path):
    # the entries exactly as version 1 wrote them (a stack without background, factor 2)
    labels = np.array([[[1, 2, 2], [3, 1, 1]]], np.uint8)  # label ids: class id + 1
    probabilities = np.full((3, 1, 1, 2), 1 / 3, np.float32)
    texts = {
        "class_names": ["road", "car", "tree"],
        "colors": class_colors(4).tolist(),
        "parameters": {"preset": "fast", "plane_offset": [4]},
        "meta": {
            "format": "napari-itaclip result bundle", "version": 1, "probability_factor": 2,
            "background": False, "label_offset": 1, "name": "street",
            "geometry": {"scale": [5.0, 1.0, 1.0], "translate": [20.0, 0.0, 0.0]},
        },
    }  # fmt: skip
    path = tmp_path / "street.itaclip.npz"
    np.savez_compressed(
        path,
        labels=labels,
        probabilities=probabilities,
        **{key: np.array(json.dumps(value)) for key, value in texts.items()},
    )
    record = load_bundle(path)
    np.testing.assert_array_equal(record.label_image, labels)
    assert not record.fresh and record.label_names == ["unlabelled", "road", "car", "tree"]
    *probability_layers, (data, kwargs, kind) = get_reader(str(path))(str(path))
    assert kind == "labels" and kwargs["name"] == "street labels"
    np.testing.assert_array_equal(data, labels)
    np.testing.assert_allclose(kwargs["scale"], (5, 1, 1))  # stored geometry, as written
    np.testing.assert_allclose(kwargs["translate"], (20, 0, 0))
    assert [kw["name"] for _, kw, _ in probability_layers] == [
        "street p(road)", "street p(car)", "street p(tree)",
    ]  # fmt: skip
    assert save_bundle(tmp_path / "street.itaclip.npz", record).name == "street.itaclip"

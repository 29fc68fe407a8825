"""The label convention (labels.py) and the one record behind layers and bundle files."""

from __future__ import annotations

import numpy as np
import pytest

from napari_itaclip import labels as convention
from napari_itaclip.bundle import save_bundle
from napari_itaclip.colors import class_colors, class_colors_uint8
from napari_itaclip.labels import ResultRecord
from napari_itaclip.layers import result_to_layer_data
from test_layers import make_result


@pytest.mark.parametrize("background, offset", [(True, 0), (False, 1)])
def test_class_ids_and_label_ids_round_trip(background, offset):
    class_ids = np.array([[0, 1], [2, 2]], np.uint8)
    label_ids = convention.label_ids(class_ids, 3, background)
    np.testing.assert_array_equal(label_ids, class_ids.astype(int) + offset)
    np.testing.assert_array_equal(convention.class_ids(label_ids, background), class_ids)
    names = convention.label_names(["sky", "cat", "dog"], background)
    assert names == (
        ["background", "cat", "dog"] if background else ["unlabelled", "sky", "cat", "dog"]
    )


def test_unlabelled_pixels_have_no_class():
    assert convention.class_ids(np.array([0, 1, 3], np.uint8), background=False).tolist() == [
        -1,
        0,
        2,
    ]


def test_label_id_dtype_counts_the_offset():
    # 256 class ids fit uint8 (the engine's rule); 256 label ids from 1 to 256 do not
    assert convention.label_id_dtype(256, background=True) == np.uint8
    assert convention.label_id_dtype(255, background=False) == np.uint8
    assert convention.label_id_dtype(256, background=False) == np.uint16
    widened = convention.label_ids(np.array([255], np.uint8), 256, background=False)
    assert widened.dtype == np.uint16 and widened.tolist() == [256]


@pytest.mark.parametrize("background", [True, False])
def test_a_class_has_its_label_id_colour_everywhere(background):
    offset = convention.label_offset(background)
    palette = convention.class_palette(4, background)
    colors = convention.label_colors(4, background)
    assert colors.shape == (4 + offset, 4)
    np.testing.assert_allclose(colors, class_colors(4 + offset))
    np.testing.assert_array_equal(palette, class_colors_uint8(4 + offset)[offset:])
    # what the napari layer shows for the label id of each class
    result = make_result(["a", "b", "c", "d"], background)
    *_, (_, kwargs, _) = result_to_layer_data(result)
    for class_id in range(4):
        shown = kwargs["colormap"][class_id + offset]
        if convention.painted_classes(4, background)[class_id]:
            np.testing.assert_array_equal(np.rint(np.multiply(shown[:3], 255)), palette[class_id])
        else:
            assert shown == convention.BACKGROUND_COLOR
    assert convention.painted_classes(3, background).tolist() == [not background, True, True]


def assert_same(expected, actual, where="layer data"):
    """Equal nested dicts, lists, tuples and arrays (arrays to float precision)."""
    if isinstance(expected, dict):
        assert expected.keys() == actual.keys(), where
        for key in expected:
            assert_same(expected[key], actual[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)) and not np.isscalar(expected):
        assert len(expected) == len(actual), where
        for i, (a, b) in enumerate(zip(expected, actual, strict=True)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(expected, np.ndarray):
        np.testing.assert_allclose(expected, actual, err_msg=where)
    else:
        assert expected == actual, where


def without_run_identity(layer_data):
    """Layer data less what differs on purpose between a fresh run and its file: the run id,
    the checksum (a file may hold corrections) and the timings (not stored)."""
    for _, kwargs, _ in layer_data:
        for key in ("result_id", "labels_checksum", "timings"):
            kwargs["metadata"]["itaclip"].pop(key, None)
    return layer_data


@pytest.mark.parametrize("background", [True, False])
def test_record_from_a_result_and_from_its_file_give_the_same_layers(tmp_path, background):
    result = make_result(
        ["sky", "cat", "dog"], background, shape=(2, 6, 8), factor=2,
        parameters={"plane_offset": [0], "source_layer": "scan"},
    )  # fmt: skip
    fresh = ResultRecord.from_result(result)
    loaded = ResultRecord.from_bundle(save_bundle(tmp_path / "scan", result))
    assert fresh.fresh and not loaded.fresh
    labels = convention.class_ids(loaded.label_image, background)
    np.testing.assert_array_equal(labels, result.labels)
    from_result, from_file = result_to_layer_data(fresh), result_to_layer_data(loaded)
    # a fresh result's labels layer may be replaced by a re-run; a file's never
    assert from_result[-1][1]["metadata"]["itaclip"]["labels_checksum"]
    assert from_file[-1][1]["metadata"]["itaclip"]["labels_checksum"] is None
    assert_same(without_run_identity(from_result), without_run_identity(from_file))
    assert_same(without_run_identity(result_to_layer_data(result)), from_file)


def test_old_names_warn_and_still_work():
    from napari_itaclip import bundle
    from napari_itaclip.engine import postprocess

    with pytest.warns(DeprecationWarning, match="labels.ResultRecord"):
        assert bundle.ResultBundle is ResultRecord
    with pytest.warns(DeprecationWarning, match="label_id_dtype"):
        assert bundle.label_dtype(257) == np.uint16 and bundle.label_dtype(256) == np.uint8
    with pytest.warns(DeprecationWarning):
        assert bundle.label_offset(False) == 1
    result = make_result(["a", "b"], background=False)
    with pytest.warns(DeprecationWarning):
        np.testing.assert_array_equal(bundle.label_image(result), result.labels + 1)
    with pytest.warns(DeprecationWarning, match="class_id_dtype"):
        assert postprocess.label_dtype is postprocess.class_id_dtype

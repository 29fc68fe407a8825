"""Image readers, file finding and label writers (`napari_itaclip.io`), no model needed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_itaclip.colors import class_colors_uint8
from napari_itaclip.io import (
    ImageFile,
    check_output_file,
    check_output_folder,
    find_images,
    index_files,
    overlay_image,
    read_image,
    read_label_image,
    replacing,
    stored_shape,
)
from napari_itaclip.labels import class_palette


def save_rgb(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def test_overlay_blends_class_colours_and_leaves_background_bare():
    rgb = np.array([[[0, 0, 0], [255, 255, 255], [10, 20, 30]]], np.uint8)
    labels = np.array([[1, 1, 0]], np.uint8)
    palette = np.array([[0, 0, 0], [200, 100, 0]], np.uint8)
    with_background = overlay_image(rgb, labels, palette, background=True)
    # 128/255 of the colour over 127/255 of the image, rounded.
    np.testing.assert_array_equal(with_background[0, 0], [100, 50, 0])
    np.testing.assert_array_equal(with_background[0, 1], [227, 177, 127])
    np.testing.assert_array_equal(with_background[0, 2], [10, 20, 30])
    without_background = overlay_image(rgb, labels, palette, background=False)
    np.testing.assert_array_equal(without_background[0, 2], [5, 10, 15])


def test_class_palette_with_background_starts_black():
    np.testing.assert_array_equal(class_palette(3, background=True), class_colors_uint8(3))
    np.testing.assert_array_equal(class_palette(3, background=True)[0], [0, 0, 0])


def test_read_image_keeps_rgb_order_and_bit_depth(tmp_path):
    red = np.zeros((4, 5, 3), np.uint8)
    red[..., 0] = 255
    assert read_image(save_rgb(tmp_path / "red.png", red))[0, 0].tolist() == [255, 0, 0]
    deep = (np.arange(20, dtype=np.uint16) * 3000).reshape(4, 5)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    loaded = read_image(tmp_path / "deep.png")
    assert loaded.dtype == np.uint16
    np.testing.assert_array_equal(loaded, deep)
    tifffile.imwrite(tmp_path / "stack.tif", red[None])
    assert read_image(tmp_path / "stack.tif").shape == (4, 5, 3)


@pytest.mark.parametrize(
    ("stored", "read"),
    [
        ((3, 6, 7), (3, 6, 7)),  # a Z stack keeps its planes
        ((3, 6, 7, 3), (3, 6, 7, 3)),  # an RGB stack too
        ((1, 6, 7), (6, 7)),  # one page stored as a stack
        ((2, 1, 6, 7), (2, 6, 7)),  # (T, Z=1, Y, X)
        ((6, 7, 1), (6, 7)),  # one channel
        ((1, 7), (1, 7)),  # never fewer than two axes
    ],
)
def test_tiff_keeps_its_planes_less_length_one_axes(tmp_path, stored, read):
    path = tmp_path / "image.tif"
    data = np.arange(np.prod(stored), dtype=np.uint16).reshape(stored)
    tifffile.imwrite(path, data, photometric="minisblack")
    assert stored_shape(path) == read  # from the header alone
    image = read_image(path)
    assert image.shape == read
    np.testing.assert_array_equal(image.ravel(), data.ravel())


def test_stored_shape_is_none_for_other_formats_and_refuses_damaged_tiffs(tmp_path):
    assert stored_shape(save_rgb(tmp_path / "a.png", np.zeros((4, 5, 3), np.uint8))) is None
    (tmp_path / "bad.tif").write_bytes(b"not a TIFF")
    with pytest.raises(ValueError, match="cannot read TIFF"):
        stored_shape(tmp_path / "bad.tif")
    with pytest.raises(ValueError, match="cannot read TIFF"):
        read_image(tmp_path / "bad.tif")


def test_read_label_image_returns_palette_indices_and_rejects_colours(tmp_path):
    indices = np.array([[0, 1], [15, 255]], np.uint8)
    image = Image.fromarray(indices)
    image.putpalette(class_colors_uint8(256).ravel().tolist())
    image.save(tmp_path / "voc.png")
    np.testing.assert_array_equal(read_label_image(tmp_path / "voc.png"), indices)
    save_rgb(tmp_path / "colour.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="mode RGB; .*class ids, not colours"):
        read_label_image(tmp_path / "colour.png")


def test_find_images_keeps_sub_folders_and_passes_over_the_rest(tmp_path):
    pixels = np.zeros((4, 5, 3), np.uint8)
    top = save_rgb(tmp_path / "in" / "a.png", pixels)
    nested = save_rgb(tmp_path / "in" / "x" / "b.jpg", pixels)
    save_rgb(tmp_path / "in" / ".hidden" / "c.png", pixels)
    save_rgb(tmp_path / "in" / "out" / "a_overlay.png", pixels)  # an earlier run's output
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    inputs = [tmp_path / "in", top, tmp_path / "missing.png"]
    found, problems = find_images(inputs, out_dir=tmp_path / "in" / "out")
    assert found == [ImageFile(top, Path()), ImageFile(nested, Path("x"))]
    assert problems == [f"{tmp_path / 'missing.png'}: no such file or folder"]
    assert find_images([tmp_path / "in"], "*.jpg")[0] == [ImageFile(nested, Path("x"))]


def test_index_files_by_id_and_suffix(tmp_path):
    save_rgb(tmp_path / "a_left.png", np.zeros((2, 2, 3), np.uint8))
    save_rgb(tmp_path / "sub" / "b_left.png", np.zeros((2, 2, 3), np.uint8))
    assert set(index_files(tmp_path, "_left.png")) == {"a", "b"}
    save_rgb(tmp_path / "sub" / "a_left.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="two files under .* have the id 'a_left'"):
        index_files(tmp_path)
    with pytest.raises(ValueError, match="not a folder"):
        index_files(tmp_path / "a_left.png")


def test_output_checks_refuse_files_where_folders_go(tmp_path):
    file = tmp_path / "taken"
    file.write_text("")
    check_output_folder(tmp_path / "new" / "deeper")  # can be made
    with pytest.raises(ValueError, match=f"output folder {file} is a file"):
        check_output_folder(file)
    with pytest.raises(ValueError, match=f"cannot be made: {file} is a file"):
        check_output_folder(file / "sub")
    with pytest.raises(ValueError, match="is a folder"):
        check_output_file(tmp_path)
    check_output_file(tmp_path / "metrics.json")
    if os.name == "posix" and os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ValueError, match="no permission"):
            check_output_folder(locked / "out")


def test_replacing_leaves_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "labels.png"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), replacing(path) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert path.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [path]
    with replacing(path) as temporary:
        assert temporary.name.startswith(".tmp-") and temporary.name.endswith("labels.png")
        temporary.write_bytes(b"new")
    assert path.read_bytes() == b"new"

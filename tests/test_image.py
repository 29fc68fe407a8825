"""Input stage (METHOD.md 1): dtype handling, resize rule, normalisation."""

import numpy as np
import pytest

from napari_itaclip.engine.image import (
    CLIP_MEAN_255,
    CLIP_STD_255,
    normalise,
    resize_short_side,
    resized_shape,
    to_rgb_uint8,
)


def test_grey_becomes_three_equal_channels():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb = to_rgb_uint8(grey)
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], grey)


def test_rgba_alpha_is_ignored():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 10
    rgba[..., 3] = 255
    np.testing.assert_array_equal(to_rgb_uint8(rgba), rgba[..., :3])


def test_uint16_is_mapped_by_robust_percentiles():
    values = np.linspace(0, 1000, 9999).astype(np.uint16).reshape(101, 99)
    values[0, 0] = 65535  # one hot pixel must not squash the rest
    rgb = to_rgb_uint8(values)
    lo, hi = np.percentile(values.astype(float), (0.5, 99.5))
    assert rgb[values <= lo].max() == 0
    assert rgb[values >= hi].min() == 255
    mid = (values > lo + 50) & (values < hi - 50)
    assert rgb[..., 0][mid].min() > 0 and rgb[..., 0][mid].max() < 255


def test_float_image_and_constant_image():
    ramp = np.linspace(-1.0, 1.0, 200).reshape(10, 20)
    rgb = to_rgb_uint8(ramp)
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255
    assert np.all(to_rgb_uint8(np.full((4, 4), 7.5)) == 128)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((0, 5), np.uint8), "empty"),
        (np.zeros((4, 4, 2), np.uint8), "channels"),
        (np.zeros((2, 4, 4, 3), np.uint8), "dimensions"),
        (np.zeros(5, np.uint8), "dimensions"),
        (np.array([[np.nan, 1.0]]), "NaN"),
        (np.array([[np.inf, 1.0]]), "NaN or infinite"),
    ],
)
def test_bad_images_raise_value_error(image, message):
    with pytest.raises(ValueError, match=message):
        to_rgb_uint8(image)


def test_non_arrays_and_non_numeric_raise_type_error():
    with pytest.raises(TypeError, match="numpy"):
        to_rgb_uint8("not an image")
    with pytest.raises(TypeError, match="numeric"):
        to_rgb_uint8(np.array([["a", "b"]]))


@pytest.mark.parametrize(
    ("shape", "short", "expected"),
    [
        ((375, 500), 336, (336, 448)),  # the paper's cost example
        ((40, 56), 336, (336, 470)),  # small images are upscaled
        ((100, 5000), 336, (41, 2048)),  # the long side is capped at 2048
        ((480, 640), 448, (448, 597)),
    ],
)
def test_resize_rule(shape, short, expected):
    # sf = min(2048 / max(h, w), S / min(h, w)); new = int(side * sf + 0.5)
    assert resized_shape(*shape, short, 2048) == expected
    out = resize_short_side(np.zeros((*shape, 3), np.uint8), short)
    assert out.shape == (*expected, 3)


def test_resize_uses_opencv_linear_on_uint8():
    import cv2

    rgb = np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    expected = cv2.resize(rgb, (448, 336), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(resize_short_side(rgb, 336), expected)


def test_normalise_uses_clip_constants_on_0_255_scale():
    rgb = np.zeros((1, 2, 3), np.uint8)
    rgb[0, 1] = (255, 255, 255)
    x = normalise(rgb).numpy()
    assert x.shape == (1, 3, 1, 2)
    for c in range(3):
        assert x[0, c, 0, 0] == pytest.approx(-CLIP_MEAN_255[c] / CLIP_STD_255[c], rel=1e-6)
        assert x[0, c, 0, 1] == pytest.approx((255 - CLIP_MEAN_255[c]) / CLIP_STD_255[c], rel=1e-6)

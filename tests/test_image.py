"""Input stage (docs/method.md §1): dtype handling, resize rule, normalisation."""

import math

import numpy as np
import pytest

from napari_itaclip.engine.image import (
    CLIP_MEAN_255,
    CLIP_STD_255,
    PROBABILITY_BUDGET_BYTES,
    check_image_size,
    minimum_short_side,
    normalise,
    probability_downsample_for_budget,
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


# ------------------------------------------------------------------ dtype rule
def test_integers_within_0_255_keep_their_values():
    values = np.arange(201, dtype=np.uint16).reshape(3, 67)  # max 200: not stretched to 255
    rgb = to_rgb_uint8(values)
    np.testing.assert_array_equal(rgb[..., 1], values)
    signed = np.array([[0, 17, 255]], np.int32)
    np.testing.assert_array_equal(to_rgb_uint8(signed)[..., 0], signed)
    assert np.all(to_rgb_uint8(np.full((4, 4), 100, np.uint16)) == 100)  # constant, not 128


def test_floats_in_0_1_are_scaled_by_255_and_rounded():
    floats = np.array([[0.0, 0.5, 1.0, 0.2, 0.7]], np.float32)
    # x * 255 rounded to nearest (np.rint): 0.5 -> 127.5 -> 128, 0.7 -> 178.5 -> 178 (even)
    np.testing.assert_array_equal(to_rgb_uint8(floats)[0, :, 0], [0, 128, 255, 51, 178])
    dim = np.full((3, 3), 0.25)  # a dim image stays dim instead of being stretched
    assert np.all(to_rgb_uint8(dim) == 64)


def test_uint16_beyond_255_is_stretched():
    values = np.linspace(0, 4000, 100 * 120).astype(np.uint16).reshape(100, 120)
    rgb = to_rgb_uint8(values)
    lo, hi = np.percentile(values, (0.5, 99.5))
    expected = np.clip(np.rint((values - lo) * (255 / (hi - lo))), 0, 255)
    np.testing.assert_array_equal(rgb[..., 2], expected)
    assert rgb.min() == 0 and rgb.max() == 255


def test_negative_floats_are_stretched():
    values = np.array([[-0.5, 0.0, 0.5]] * 3)
    assert to_rgb_uint8(values)[0, :, 0].tolist() == [0, 128, 255]


def test_large_uint16_conversion_uses_no_float64_copy():
    import tracemalloc

    height, width = 1500, 2000
    image = np.random.default_rng(0).integers(0, 4000, (height, width, 3), dtype=np.uint16)
    output_bytes = image.size  # the uint8 result itself
    tracemalloc.start()
    try:
        rgb = to_rgb_uint8(image)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rgb.shape == image.shape and rgb.max() == 255
    # a whole float64 copy alone would be 8 bytes per value
    assert peak - output_bytes < 3 * image.size


def test_large_image_stretch_matches_exact_percentiles_closely():
    # percentiles of a large image come from a regular sample; the mapping barely moves
    rng = np.random.default_rng(2)
    image = (np.linspace(0, 3000, 1200)[:, None] + rng.normal(0, 50, (1200, 1500))).clip(0)
    image = image.astype(np.uint16)
    lo, hi = np.percentile(image, (0.5, 99.5))
    exact = np.clip(np.rint((image - lo) * (255 / (hi - lo))), 0, 255)
    assert np.abs(to_rgb_uint8(image)[..., 0] - exact).max() <= 1


# ----------------------------------------------------------------- size limits
def test_thin_image_boundary():
    from napari_itaclip.engine.presets import resolve_preset

    params = resolve_preset("voc21", {})
    # a 1000-pixel long side is scaled by 2048 / 1000: 8 rows -> 16 (one 16-pixel patch),
    # 7 rows -> 14
    check_image_size(8, 1000, params, patch=16)
    check_image_size(1000, 8, params, patch=16)
    for shape in ((7, 1000), (1000, 7), (1, 1000)):
        with pytest.raises(ValueError, match=r"long side of 1000 .* at least 8 pixels") as error:
            check_image_size(*shape, params, patch=16)
        assert "16" in str(error.value)
    # small but not thin images are upscaled to short_side and are fine
    check_image_size(1, 1, params, patch=16)


def test_minimum_follows_the_patch_and_the_blur_kernel():
    from napari_itaclip.engine.presets import resolve_preset

    with_views = resolve_preset("voc21", {})
    without = resolve_preset("voc21", {"image_engineering": False})
    # 2048-long side: a resized side of n needs n - 0.5 rows of the original
    assert minimum_short_side(2048, with_views, patch=32) == 32
    assert minimum_short_side(2048, without, patch=4) == 4
    # the blur view pads 5 pixels by reflection: windows need at least 6 pixels
    assert minimum_short_side(2048, with_views, patch=4) == 6


def test_short_side_below_one_patch_is_rejected():
    from dataclasses import replace

    from napari_itaclip.engine.presets import PRESETS, resolve_preset

    with pytest.raises(ValueError, match="short_side"):  # the parameter table's minimum
        resolve_preset("fast", {"short_side": 8})
    # and the size check itself, for a Preset built without validation
    with pytest.raises(ValueError, match="short_side"):
        check_image_size(100, 100, replace(PRESETS["fast"], short_side=8), patch=16)


# -------------------------------------------------------- probability budget
@pytest.mark.parametrize(
    ("classes", "planes", "height", "width", "budget"),
    [
        (171, 1, 3000, 4000, PROBABILITY_BUDGET_BYTES),  # 8 GB at full size
        (21, 1, 3000, 4000, PROBABILITY_BUDGET_BYTES),
        (3, 1, 60, 80, 3 * 15 * 20 * 4),
        (3, 1, 61, 81, 3 * 15 * 20 * 4),
        (5, 7, 999, 1001, 10**6),
        (3, 1, 60, 80, 10**9),
    ],
)
def test_probability_downsample_is_the_smallest_factor_within_budget(
    classes, planes, height, width, budget
):
    def size(f):
        return classes * planes * math.ceil(height / f) * math.ceil(width / f) * 4

    f = probability_downsample_for_budget(classes, height, width, budget, n_planes=planes)
    assert size(f) <= budget
    assert f == 1 or size(f - 1) > budget


def test_probability_budget_examples_and_limits():
    assert probability_downsample_for_budget(171, 3000, 4000) == 4  # 8 GB -> 0.5 GB
    assert probability_downsample_for_budget(21, 480, 640) == 1
    # nothing fits: one block for the whole image is the coarsest there is
    assert probability_downsample_for_budget(10, 50, 70, 8) == 70
    for budget in (0, -1):
        with pytest.raises(ValueError, match="budget"):
            probability_downsample_for_budget(10, 50, 70, budget)

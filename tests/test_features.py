"""Kept image features (docs/method.md §10.1, §10.2) and the progressive preview."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from napari_itaclip import ITACLIP
from napari_itaclip.engine import Cancelled, prepare
from napari_itaclip.engine.features import (
    FeatureCache,
    ImageFeatures,
    feature_key,
    preview_windows,
)
from napari_itaclip.engine.windows import Window, sliding_windows

CLASSES = ["background", "red thing", "blue thing"]
SMALL = {"short_side": 64, "crop": 32, "stride": 16}  # 15 windows x 5 views


@pytest.fixture
def keeping(tiny_clip):
    """A segmenter that keeps image features (the conftest one keeps none)."""
    return ITACLIP.from_open_clip(tiny_clip, device="cpu", cache_dir=False)


@pytest.fixture
def encoder_images(monkeypatch):
    """How many images went through the encoder, per call."""
    from napari_itaclip.engine import window_encoding

    real, sizes = window_encoding.encode_dense, []
    monkeypatch.setattr(
        window_encoding, "encode_dense", lambda v, im: sizes.append(len(im)) or real(v, im)
    )
    return sizes


def test_rerun_equals_a_fresh_run_without_an_encoder_pass(
    keeping, tiny_clip, rgb_image, encoder_images
):
    first = keeping.segment(rgb_image, CLASSES, preset="voc21", **SMALL)
    assert first.parameters["image_features"] == "computed" and first.timings["encoder"] > 0
    encoder_images.clear()
    changed = {
        "c_img": 0.3,
        "logit_scale": 20,
        "prob_thd": 0.3,
        "area_thd": None,
        "pamr_steps": 3,
        "closing": False,
        "c_def": 0.5,
    }
    aux = "cat >=a small pet\nsky >=the blue above\n"
    request = prepare(
        ["background", "cat", "sky"], preset="voc21", aux_text=aux, **SMALL, **changed
    )
    again = keeping.segment(rgb_image, request)
    assert encoder_images == []
    assert again.parameters["image_features"] == "reused" and again.timings["encoder"] == 0
    fresh = ITACLIP.from_open_clip(tiny_clip, device="cpu", cache_dir=False, image_cache_mb=0)
    expected = fresh.segment(rgb_image, request)
    assert expected.parameters["image_features"] == "computed"
    np.testing.assert_allclose(again.probabilities, expected.probabilities, atol=1e-5)
    np.testing.assert_array_equal(again.labels, expected.labels)


def test_a_stack_keeps_features_per_plane(keeping, rgb_image, encoder_images):
    planes = [rgb_image, np.ascontiguousarray(rgb_image[::-1])]
    for plane in planes:
        keeping.segment(plane, CLASSES, preset="fast", short_side=64)
    encoder_images.clear()
    for plane in planes:
        result = keeping.segment(plane, ["a", "b"], preset="fast", short_side=64)
        assert result.parameters["image_features"] == "reused"
    assert encoder_images == [] and len(keeping.image_cache) == 2


ENCODER_SETTINGS = {
    "short_side": 80,
    "max_long_side": 64,
    "crop": 48,
    "stride": 8,
    "image_engineering": False,
}


def test_feature_key_follows_pixels_and_encoder_settings_only(rgb_image):
    params = prepare(CLASSES, preset="voc21", **SMALL).params
    base = feature_key(rgb_image, "model", params, "fp32", "cpu")
    assert feature_key(rgb_image.copy(), "model", params, "fp32", "cpu") == base
    one_pixel = rgb_image.copy()
    one_pixel[5, 7, 1] ^= 1
    assert feature_key(one_pixel, "model", params, "fp32", "cpu") != base
    for name, value in ENCODER_SETTINGS.items():
        other = dataclasses.replace(params, **{name: value})
        assert feature_key(rgb_image, "model", other, "fp32", "cpu") != base, name
    assert feature_key(rgb_image, "model", params, "fp16", "cpu") != base
    assert feature_key(rgb_image, "model", params, "fp32", "cuda:0") != base
    assert feature_key(rgb_image, "other model", params, "fp32", "cpu") != base
    not_encoder = {"c_img": 0.1, "logit_scale": 5, "pamr_steps": 0, "background": False}
    other = dataclasses.replace(params, **not_encoder)
    assert feature_key(rgb_image, "model", other, "fp32", "cpu") == base


def test_one_changed_pixel_encodes_again(keeping, rgb_image, encoder_images):
    keeping.segment(rgb_image, CLASSES, preset="fast", short_side=64)
    changed = rgb_image.copy()
    changed[0, 0, 0] ^= 1
    encoder_images.clear()
    result = keeping.segment(changed, CLASSES, preset="fast", short_side=64)
    assert result.parameters["image_features"] == "computed" and encoder_images


def features_of(n_bytes: int) -> ImageFeatures:
    return ImageFeatures((Window(0, 1, 0, 1),), (1, 1), torch.zeros(n_bytes, dtype=torch.uint8))


def test_cache_evicts_the_least_recently_used_within_the_bound():
    cache = FeatureCache(max_mb=3)
    mb = 2**20
    for key in "abc":
        cache.put(key, features_of(mb))
    assert cache.get("a") is not None  # now the most recently used
    cache.put("d", features_of(mb))
    assert cache.get("b") is None and all(cache.get(k) is not None for k in "acd")
    assert cache.nbytes <= 3 * mb
    cache.put("big", features_of(4 * mb))  # larger than the bound: used, not kept
    assert cache.get("big") is None and len(cache) == 3
    cache.put("e", features_of(2 * mb))
    assert cache.nbytes <= 3 * mb and cache.get("e") is not None


def test_segmenter_cache_bound_and_clear_cache(tiny_clip, rgb_image, encoder_images):
    one_image = ITACLIP.from_open_clip(tiny_clip, device="cpu", cache_dir=False)
    one_image.segment(rgb_image, CLASSES, preset="fast", short_side=64)
    size = one_image.image_cache.nbytes
    bounded = ITACLIP.from_open_clip(
        tiny_clip, device="cpu", cache_dir=False, image_cache_mb=1.5 * size / 2**20
    )
    for shift in range(3):
        bounded.segment(np.roll(rgb_image, shift, axis=1), CLASSES, preset="fast", short_side=64)
        assert bounded.image_cache.nbytes <= bounded.image_cache.max_bytes
    assert len(bounded.image_cache) == 1
    bounded.clear_cache()
    assert len(bounded.image_cache) == 0
    encoder_images.clear()
    again = bounded.segment(np.roll(rgb_image, 2, axis=1), CLASSES, preset="fast", short_side=64)
    assert again.parameters["image_features"] == "computed" and encoder_images


@pytest.mark.parametrize("bad", [-1, "big", True, float("nan")])
def test_bad_image_cache_size_is_refused(tiny_clip, bad):
    with pytest.raises(ValueError, match="image_cache_mb must be a number >= 0"):
        ITACLIP.from_open_clip(tiny_clip, device="cpu", image_cache_mb=bad)


# ------------------------------------------------------------------------ preview
@pytest.mark.parametrize(
    ("height", "width", "crop", "stride"),
    [(336, 448, 224, 28), (336, 500, 224, 28), (250, 1000, 224, 16), (100, 90, 32, 16), (64, 64, 224, 28)],
)  # fmt: skip
def test_preview_windows_are_full_grid_windows_covering_the_image(height, width, crop, stride):
    params = prepare(CLASSES, preset="voc21", crop=crop, stride=stride).params
    windows = sliding_windows(height, width, crop, stride)
    chosen = [windows[i] for i in preview_windows(windows, height, width, params)]
    step = stride * max(1, min(112, crop) // stride)
    assert chosen == sliding_windows(height, width, crop, step)
    covered = np.zeros((height, width), bool)
    for w in chosen:
        covered[w.y0 : w.y1, w.x0 : w.x1] = True
    assert covered.all()
    if (crop, stride) == (224, 28):  # the paper grid: the fast preset's windows
        assert chosen == sliding_windows(height, width, 224, 112)


def test_preview_costs_no_extra_encoder_images(tiny_clip, rgb_image, encoder_images):
    options = {"preset": "voc21", "short_side": 128, "crop": 64, "stride": 16}
    plain = ITACLIP.from_open_clip(tiny_clip, device="cpu", cache_dir=False, image_cache_mb=0)
    expected = plain.segment(rgb_image, CLASSES, **options)
    without = sum(encoder_images)
    encoder_images.clear()
    previews, stages = [], []
    seg = ITACLIP.from_open_clip(tiny_clip, device="cpu", cache_dir=False)
    result = seg.segment(
        rgb_image,
        CLASSES,
        preview=previews.append,
        progress=lambda done, total, stage: stages.append(stage),
        **options,
    )
    assert sum(encoder_images) == without
    assert stages.index("preview") < stages.index("encoder")
    (preview,) = previews
    assert preview.parameters["preview"] is True and result.parameters["preview"] is False
    assert preview.labels.shape == rgb_image.shape[:2]
    assert preview.probabilities.shape == result.probabilities.shape
    assert 0 < preview.timings["total"] < result.timings["total"]
    np.testing.assert_allclose(result.probabilities, expected.probabilities, atol=1e-5)
    np.testing.assert_array_equal(result.labels, expected.labels)
    # kept features: the run is fast, and there is nothing to preview
    seg.segment(rgb_image, CLASSES, preview=previews.append, **options)
    assert len(previews) == 1


def test_cancel_after_the_preview_raises_and_keeps_nothing(keeping, rgb_image):
    previews = []
    with pytest.raises(Cancelled):
        keeping.segment(
            rgb_image,
            CLASSES,
            preset="voc21",
            preview=previews.append,
            cancel=lambda: bool(previews),
            **SMALL,
        )
    assert len(previews) == 1 and previews[0].labels.shape == rgb_image.shape[:2]
    assert len(keeping.image_cache) == 0

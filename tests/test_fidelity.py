"""Fidelity: the engine against the naive, literal ITACLIP of `naive_itaclip.py`.

Tolerance (docs/method.md): fp32 on CPU, probabilities within 1e-4, labels equal. Every
preset is compared on small images (short side / stride overridden where the paper values would
be slow), two presets also at their real values, and the overrides are checked one by one. The
oracle was written from docs/method.md only; see its docstring.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from naive_itaclip import PAPER_PARAMS, NaiveITACLIP, params_for, postprocess

PROB_TOL = 1e-4
ALL_PRESETS = ("voc21", "context60", "coco_object", "coco_stuff", "cityscapes", "fast")

# Background words on line 0, variants on some lines.
BG_CLASSES = ["background, sky, wall", "cat, kitty", "dog", "red car, automobile", "tree"]
# The aux line of a class may name any of its variants ("automobile").
BG_AUX = (
    "cat >=a small furry pet with whiskers and a long tail\n"
    "dog >=a loyal animal that barks\n"
    "automobile >=a road vehicle painted red\n"
    "tree >=a tall plant with a wooden trunk and green leaves\n"
)
NOBG_CLASSES = ["grass, lawn", "road", "building, house, tower", "sky"]
NOBG_AUX = (
    "grass >=green ground cover\n"
    "road >=a paved way for cars\n"
    "building >=a structure with walls and a roof\n"
    "sky >=the blue space above the horizon\n"
)


def structured_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Four coloured regions, a gradient and noise: enough structure for PAMR and the views."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.zeros((height, width, 3), np.float64)
    top, left = yy < height // 2, xx < (2 * width) // 5
    image[top & left] = (210, 50, 40)
    image[top & ~left] = (40, 90, 230)
    image[~top & left] = (40, 190, 70)
    image[~top & ~left] = (230, 220, 60)
    image += 40 * np.sin(xx / 3.0)[..., None] * np.array([1, -1, 0.5])
    image += rng.integers(0, 35, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def grey_image(height: int = 30, width: int = 20) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    image = 30 + 4 * xx + 3 * yy
    image[(yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (min(height, width) / 3) ** 2] = 240
    return np.clip(image, 0, 255).astype(np.uint8)


def classes_for(preset: str) -> tuple[list[str], str]:
    return (BG_CLASSES, BG_AUX) if PAPER_PARAMS[preset].background else (NOBG_CLASSES, NOBG_AUX)


@pytest.fixture(scope="module")
def oracle(tiny_clip):
    return NaiveITACLIP(tiny_clip)


@pytest.fixture(scope="module")
def aux_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("aux")
    paths = {}
    for name, text in (("bg", BG_AUX), ("nobg", NOBG_AUX)):
        paths[text] = folder / f"{name}.txt"
        paths[text].write_text(text, encoding="utf-8")
    return paths


def check_agreement(result, labels, probs, n_classes):
    assert result.probabilities.shape == probs.shape == (n_classes, *labels.shape)
    assert result.labels.shape == labels.shape
    diff = float(np.abs(result.probabilities.astype(np.float64) - probs).max())
    mismatched = int((result.labels.astype(np.int64) != labels).sum())
    print(f"max |dp| = {diff:.2e}, label mismatches = {mismatched}")
    assert diff <= PROB_TOL
    assert mismatched == 0
    return diff


def compare(segmenter, oracle, image, classes, preset, aux=None, aux_path=None, **overrides):
    """Run both; assert PROB_TOL and equal labels. Returns (labels, probabilities) of the oracle."""
    params = params_for(preset, **overrides)
    labels, probs = oracle.segment(image, classes, params, aux_text=aux)
    result = segmenter.segment(
        image,
        classes,
        preset=preset,
        aux_text=aux_path if aux_path is not None else aux,
        **overrides,
    )
    check_agreement(result, labels, probs, len(classes))
    return labels, probs


def test_engine_presets_match_method_table():
    from napari_itaclip import PRESETS

    for name, expected in PAPER_PARAMS.items():
        preset = PRESETS[name]
        for field in (
            "short_side",
            "logit_scale",
            "c_img",
            "c_def",
            "prob_thd",
            "area_thd",
            "background",
            "max_long_side",
            "crop",
            "stride",
            "image_engineering",
            "pamr_steps",
            "closing",
        ):
            assert getattr(preset, field) == getattr(expected, field), (name, field)
        assert tuple(preset.pamr_dilations) == expected.pamr_dilations


# ---------------------------------------------------------------------------------------------
# Every preset on small images
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_preset_two_windows_short_crop(segmenter, oracle, aux_files, preset):
    """24x48 -> 120x240 at the preset's stride (28 or 112): 2 windows of 120x224, so the
    positional embedding is interpolated to a 7x14 grid (120 is not a multiple of 16)."""
    classes, aux = classes_for(preset)
    image = structured_rgb(24, 48, seed=1)
    compare(
        segmenter, oracle, image, classes, preset, aux=aux, aux_path=aux_files[aux], short_side=120
    )


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_preset_single_small_crop_no_aux(segmenter, oracle, preset):
    """40x56 -> 80x112: one crop smaller than 224 in both axes; no auxiliary text."""
    classes, _ = classes_for(preset)
    compare(segmenter, oracle, structured_rgb(40, 56, seed=2), classes, preset, short_side=80)


@pytest.mark.parametrize("preset", ["voc21", "cityscapes"])
def test_preset_one_side_below_crop_other_above(segmenter, oracle, aux_files, preset):
    """20x40 at short side 200 -> 200x400: crops 200x224 (12x14 grid), 5 windows at stride 56."""
    classes, aux = classes_for(preset)
    image = structured_rgb(20, 40, seed=3)
    compare(
        segmenter,
        oracle,
        image,
        classes,
        preset,
        aux=aux,
        aux_path=aux_files[aux],
        short_side=200,
        stride=56,
    )


def test_voc21_real_values(segmenter, oracle, aux_files):
    """The paper preset unchanged on a 40x40 image (upscaled to 336x336: 5x5 windows x 5 views)."""
    image = structured_rgb(40, 40, seed=4)
    compare(segmenter, oracle, image, BG_CLASSES, "voc21", aux=BG_AUX, aux_path=aux_files[BG_AUX])


def test_fast_real_values(segmenter, oracle, aux_files):
    """The fast preset unchanged on a 40x56 image (336x470: 2x4 windows, one view)."""
    image = structured_rgb(40, 56, seed=5)
    compare(
        segmenter, oracle, image, NOBG_CLASSES, "fast", aux=NOBG_AUX, aux_path=aux_files[NOBG_AUX]
    )


@pytest.mark.parametrize("preset", ["context60", "coco_stuff"])
def test_grey_image(segmenter, oracle, preset):
    """A (H, W) uint8 grey image is its grey value on all three channels."""
    classes, aux = classes_for(preset)
    compare(segmenter, oracle, grey_image(30, 20), classes, preset, aux=aux, short_side=64)


def test_max_long_side(segmenter, oracle):
    """10x60 at short side 120, long side capped at 300 -> 50x300."""
    image = structured_rgb(10, 60, seed=6)
    compare(
        segmenter,
        oracle,
        image,
        NOBG_CLASSES,
        "coco_object",
        short_side=120,
        max_long_side=300,
        background=False,
        stride=56,
        image_engineering=False,
    )


# ---------------------------------------------------------------------------------------------
# Overrides
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"pamr_steps": 0},
        {"image_engineering": False},
        {"closing": False},
        {"pamr_steps": 3, "pamr_dilations": (4, 8)},
        {"pamr_dilations": (6,)},
        {"c_img": 0.3, "c_def": 0.5, "logit_scale": 20},
        {"c_def": 0.0},
        {"background": False, "area_thd": None, "prob_thd": 0.0},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_overrides(segmenter, oracle, aux_files, overrides):
    classes, aux = (
        (NOBG_CLASSES, NOBG_AUX) if overrides.get("background") is False else (BG_CLASSES, BG_AUX)
    )
    image = structured_rgb(32, 44, seed=7)
    compare(
        segmenter,
        oracle,
        image,
        classes,
        "voc21",
        aux=aux,
        aux_path=aux_files[aux],
        short_side=96,
        **overrides,
    )


def _area_threshold_between(labels_argmax, n_classes, foreground):
    """An area_thd that removes the smallest present foreground class but keeps the largest."""
    counts = np.bincount(labels_argmax.ravel(), minlength=n_classes)[foreground]
    total = counts.sum()
    shares = np.sort(counts[counts > 0] / total)
    assert len(shares) >= 2, "need two present foreground classes to test the area threshold"
    return float((shares[0] + shares[1]) / 2)


@pytest.mark.parametrize(
    ("preset", "classes", "aux", "class_0_removed"),
    [
        ("coco_stuff", NOBG_CLASSES, NOBG_AUX, False),
        # Without background every class is "non-background", class 0 included: here class 0
        # is the smallest and must be removed (and the total must count it).
        ("coco_stuff", NOBG_CLASSES[::-1], None, True),
        ("voc21", BG_CLASSES, BG_AUX, False),
    ],
    ids=["no-background", "no-background-class-0-smallest", "background"],
)
def test_area_threshold_removes_a_class(segmenter, oracle, preset, classes, aux, class_0_removed):
    """area_thd on lists without background (coco_stuff) and with background (voc21)."""
    image = structured_rgb(32, 44, seed=8)
    base = params_for(preset, short_side=96, area_thd=None, prob_thd=0.0, image_engineering=False)
    logits, query_class = oracle.logits(image, classes, base, aux_text=aux)
    _, probs = postprocess(logits, query_class, base)
    foreground = list(range(1, len(classes))) if base.background else list(range(len(classes)))
    area_thd = _area_threshold_between(probs.argmax(0), len(classes), foreground)

    params = replace(base, area_thd=area_thd)
    labels, probs = postprocess(logits, query_class, params)
    removed = [c for c in foreground if not probs[c].any()]
    assert removed, "the threshold should zero at least one class"
    assert len(removed) < len(foreground)
    assert (0 in removed) == class_0_removed
    result = segmenter.segment(
        image,
        classes,
        preset=preset,
        aux_text=aux,
        short_side=96,
        area_thd=area_thd,
        prob_thd=0.0,
        image_engineering=False,
    )
    check_agreement(result, labels, probs, len(classes))


def _threshold_in_widest_gap(values):
    """A threshold between 20% and 80% of the values, far from all of them (so that 1e-6
    differences between oracle and engine cannot move a pixel across it)."""
    ordered = np.sort(values.ravel())
    lo, hi = int(0.2 * len(ordered)), int(0.8 * len(ordered))
    gaps = np.diff(ordered[lo:hi])
    i = lo + int(gaps.argmax())
    assert ordered[i + 1] - ordered[i] > 1e-4
    return float((ordered[i] + ordered[i + 1]) / 2)


@pytest.mark.parametrize("preset", ["coco_object", "cityscapes"])
def test_probability_threshold_zeroes_pixels(segmenter, oracle, preset):
    classes, aux = classes_for(preset)
    image = structured_rgb(32, 44, seed=9)
    base = params_for(preset, short_side=96, prob_thd=0.0, closing=False, image_engineering=False)
    logits, query_class = oracle.logits(image, classes, base, aux_text=aux)
    unthresholded, probs = postprocess(logits, query_class, base)
    best = probs.max(0)
    # Thresholding must visibly zero pixels: take the threshold among non-zero-label pixels.
    prob_thd = _threshold_in_widest_gap(best[unthresholded != 0])

    params = replace(base, prob_thd=prob_thd)
    labels, probs = postprocess(logits, query_class, params)
    below = best < prob_thd
    assert (unthresholded[below] != 0).any() and (labels[~below] != 0).any()
    assert (labels[below] == 0).all()
    result = segmenter.segment(
        image,
        classes,
        preset=preset,
        aux_text=aux,
        short_side=96,
        prob_thd=prob_thd,
        closing=False,
        image_engineering=False,
    )
    check_agreement(result, labels, probs, len(classes))

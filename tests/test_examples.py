"""Examples (docs/method.md §10.3): painted pixels and banks as visual keys."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import build_tiny_clip
from napari_itaclip import ITACLIP
from napari_itaclip.engine import prepare
from napari_itaclip.engine.examples import ExamplesBank, ExamplesTerm, class_prototypes

CLASSES = ["red thing", "blue thing"]
OPTIONS = {"preset": "voc21", "background": False, "short_side": 64, "crop": 32, "stride": 16}


@pytest.fixture(scope="module")
def keeping(tiny_clip):
    return ITACLIP.from_open_clip(tiny_clip, device="cpu", cache_dir=False)


def strokes(shape=(60, 80)) -> np.ndarray:
    """Two short strokes per half of the two-colour `rgb_image`: red left (0), blue right (1)."""
    examples = np.full(shape, -1)
    examples[10:12, 8:24] = 0
    examples[45:47, 10:30] = 0
    examples[12:14, 50:70] = 1
    examples[40:42, 52:72] = 1
    return examples


def truth(shape=(60, 80)) -> np.ndarray:
    labels = np.zeros(shape, int)
    labels[:, 40:] = 1
    return labels


@pytest.mark.parametrize("prototypes", [True, False])
def test_labels_equal_the_examples_where_given(keeping, rgb_image, prototypes):
    examples = np.full(rgb_image.shape[:2], -1)
    examples[20:25, 50:55] = 0  # against the colour: the user is right by definition
    examples[0, 0] = 1
    result = keeping.segment(
        rgb_image, CLASSES, examples=examples, examples_prototypes=prototypes, **OPTIONS
    )
    painted = examples >= 0
    np.testing.assert_array_equal(result.labels[painted], examples[painted])
    assert result.parameters["examples"]["source"] == "image"
    assert result.parameters["examples"]["pixels"] == 26


def test_no_examples_and_all_minus_one_are_identical(keeping, tiny_clip, rgb_image):
    plain = ITACLIP.from_open_clip(tiny_clip, device="cpu", cache_dir=False, image_cache_mb=0)
    expected = plain.segment(rgb_image, CLASSES, **OPTIONS)
    for examples in (None, np.full(rgb_image.shape[:2], -1, np.int16)):
        result = keeping.segment(rgb_image, CLASSES, examples=examples, **OPTIONS)
        np.testing.assert_array_equal(result.probabilities, expected.probabilities)
        np.testing.assert_array_equal(result.labels, expected.labels)
        assert result.parameters["examples"] is None


@pytest.mark.parametrize("prototypes", [True, False])
def test_examples_move_unpainted_pixels_to_the_right_class(keeping, rgb_image, prototypes):
    # the class names say nothing about the colours to a random model, so the text alone
    # cannot be right on both halves; a few strokes per half tell it which is which
    unpainted = strokes() < 0
    settings = {"examples_prototypes": prototypes, "examples_weight": 20, **OPTIONS}
    text_only = keeping.segment(rgb_image, CLASSES, **settings)
    with_examples = keeping.segment(rgb_image, CLASSES, examples=strokes(), **settings)
    before = (text_only.labels == truth())[unpainted].mean()
    after = (with_examples.labels == truth())[unpainted].mean()
    assert before < 0.9 and after > 0.95


def test_examples_on_kept_features_cost_no_encoder_pass(keeping, rgb_image, monkeypatch):
    from napari_itaclip.engine import window_encoding

    keeping.segment(rgb_image, CLASSES, **OPTIONS)
    monkeypatch.setattr(window_encoding, "encode_dense", None)  # any encoder call fails
    result = keeping.segment(rgb_image, CLASSES, examples=strokes(), **OPTIONS)
    assert result.parameters["image_features"] == "reused" and result.timings["encoder"] == 0


def test_a_class_with_examples_survives_the_area_threshold(keeping, rgb_image):
    classes = ["background", *CLASSES, "green thing"]
    options = OPTIONS | {"background": True, "area_thd": 0.9}
    examples = np.full(rgb_image.shape[:2], -1)
    examples[:3, :3] = 3
    without = keeping.segment(rgb_image, classes, **options)
    assert without.probabilities[3].max() == 0  # removed: too small
    result = keeping.segment(rgb_image, classes, examples=examples, **options)
    assert result.probabilities[3].max() > 0


@pytest.mark.parametrize(
    ("examples", "message"),
    [
        (np.zeros((60, 79), int), r"examples must have the image's shape \(60, 80\)"),
        (np.zeros((60, 80)), "examples must be an integer array"),
        (np.zeros((60, 80), bool), "examples must be an integer array"),
        (np.full((60, 80), 2), r"ids outside -1..1 .*\[2\]"),
        (np.full((60, 80), -2), r"ids outside -1..1 .*\[-2\]"),
        ("strokes.png", "examples must be an integer array"),
    ],
)
def test_bad_examples_are_refused_before_model_work(
    keeping, rgb_image, monkeypatch, examples, message
):
    def model_work(*args, **kwargs):
        raise AssertionError("examples must be checked before any model work")

    monkeypatch.setattr(keeping, "text_features", model_work)
    with pytest.raises(ValueError, match=message):
        keeping.segment(rgb_image, CLASSES, examples=examples, **OPTIONS)


def test_cache_term_is_the_tip_adapter_formula_averaged_per_class():
    torch.manual_seed(0)
    keys = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    ids = torch.tensor([0, 0, 1, 1, 1])
    tokens = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    params = prepare(CLASSES, examples_prototypes=False, examples_sharpness=5.0, **OPTIONS).params
    term = ExamplesTerm(keys, ids, [0, 1], 2, params)
    affinity = torch.exp(-5 * (1 - tokens @ keys.T))
    expected = torch.stack([affinity[:, :2].mean(1), affinity[:, 2:].mean(1)], 1)
    torch.testing.assert_close(term.class_affinity(tokens), expected)


def test_prototypes_are_normalised_k_means_centres_per_class():
    torch.manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)
    keys = torch.nn.functional.normalize(
        centres.repeat_interleave(100, 0) + 0.05 * torch.randn(200, 16), dim=-1
    )
    ids = torch.tensor([0] * 130 + [1] * 70)
    prototypes, owners = class_prototypes(keys, ids)
    assert owners.tolist() == [0] * math.ceil(130 / 64) + [1] * math.ceil(70 / 64)
    torch.testing.assert_close(prototypes.norm(dim=-1), torch.ones(len(owners)))
    # class 0 holds keys around both centres: its prototypes find both
    assert (prototypes[owners == 0] @ centres.T).max(0).values.min() > 0.95


# --------------------------------------------------------------------------- banks
def test_bank_round_trip_and_use_on_another_image(keeping, rgb_image, tmp_path):
    request = prepare(CLASSES, **OPTIONS)
    bank = keeping.examples_bank(
        [rgb_image, rgb_image[:, ::-1]], [strokes(), strokes()[:, ::-1]], request
    )
    assert bank.images == 2 and len(bank.keys) == len(bank.class_ids) > 0
    assert bank.settings["short_side"] == 64 and bank.class_names == tuple(CLASSES)
    path = bank.save(tmp_path / "bank.npz")
    with np.load(path, allow_pickle=False) as data:  # no pickled objects inside
        assert set(data.files) >= {"keys", "class_ids", "class_names", "model"}
    loaded = ExamplesBank.load(path)
    np.testing.assert_array_equal(loaded.keys, bank.keys)
    np.testing.assert_array_equal(loaded.class_ids, bank.class_ids)
    assert (loaded.class_names, loaded.model, loaded.settings) == (
        bank.class_names, bank.model, bank.settings)  # fmt: skip
    other = np.ascontiguousarray(rgb_image[::-1])
    settings = {"examples_weight": 20, **OPTIONS}
    direct = keeping.segment(other, CLASSES, examples=bank, **settings)
    from_file = keeping.segment(other, CLASSES, examples=loaded, **settings)
    np.testing.assert_array_equal(direct.probabilities, from_file.probabilities)
    assert from_file.parameters["examples"] == {"source": "bank", "keys": len(bank.keys)}
    assert (from_file.labels == truth()).mean() > 0.95
    # the bank's classes are found by name, in any order, among more classes
    reordered = keeping.segment(other, CLASSES[::-1], examples=loaded, **settings)
    np.testing.assert_allclose(reordered.probabilities[::-1], from_file.probabilities, atol=1e-6)
    more = keeping.segment(other, [*CLASSES, "green thing"], examples=loaded, **settings)
    assert more.parameters["examples"]["keys"] == len(bank.keys)


def test_bank_from_another_model_or_classes_is_refused(keeping, rgb_image, tmp_path):
    bank = keeping.examples_bank(rgb_image, strokes(), prepare(CLASSES, **OPTIONS))
    other_model = ITACLIP.from_open_clip(build_tiny_clip(seed=1), device="cpu", cache_dir=False)
    with pytest.raises(ValueError, match="made with another model"):
        other_model.segment(rgb_image, CLASSES, examples=bank, **OPTIONS)
    with pytest.raises(ValueError, match="'blue thing' that the request does not"):
        keeping.segment(rgb_image, ["red thing", "sky"], examples=bank, **OPTIONS)
    (tmp_path / "not-a-bank.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="is not an examples bank"):
        ExamplesBank.load(tmp_path / "not-a-bank.npz")
    with pytest.raises(ValueError, match="nothing to make a bank of"):
        keeping.examples_bank(rgb_image, np.full((60, 80), -1), prepare(CLASSES, **OPTIONS))


def test_command_line_bank_make_then_segment_a_folder(tmp_path, tiny_weights, rgb_image):
    from PIL import Image

    from napari_itaclip.bundle import SUFFIX, load_bundle
    from napari_itaclip.cli import EXIT_OK, EXIT_USAGE, main

    Image.fromarray(rgb_image).save(tmp_path / "a.png")
    Image.fromarray((strokes() + 1).astype(np.uint8)).save(tmp_path / "a_strokes.png")
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.ascontiguousarray(rgb_image[::-1])).save(folder / "b.png")
    model = ["--pretrained", str(tiny_weights), "--device", "cpu", "--preset", "fast"]
    classes = ["--classes", "; ".join(CLASSES), "--examples-weight", "20"]
    bank = tmp_path / "bank.npz"
    make = ["bank", "make", "--images", str(tmp_path / "a.png")]
    make += ["--strokes", str(tmp_path / "a_strokes.png"), "--out", str(bank)]
    assert main([*make, *classes, *model]) == EXIT_OK
    assert ExamplesBank.load(bank).class_names == tuple(CLASSES)
    out = tmp_path / "out"
    segment = ["segment", str(folder), "--examples", str(bank), "--out", str(out)]
    assert main([*segment, *classes, *model, "--format", "bundle"]) == EXIT_OK
    (saved,) = out.glob(f"*{SUFFIX}")
    assert load_bundle(saved).parameters["examples"]["source"] == "bank"
    # a bank whose classes the request lacks is refused before any image
    wrong = ["--classes", "sky; grass", "--out", str(tmp_path / "wrong")]
    assert main(["segment", str(folder), "--examples", str(bank), *wrong, *model]) == EXIT_USAGE
    too_many = (strokes() + 5).astype(np.uint8)  # value 5: class id 4, of 2 classes
    Image.fromarray(too_many).save(tmp_path / "bad_strokes.png")
    make[4] = str(tmp_path / "bad_strokes.png")
    assert main([*make, *classes, *model]) == EXIT_USAGE

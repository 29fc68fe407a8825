"""The command line end to end with the tiny random model saved as a weights file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_itaclip import __version__
from napari_itaclip.bundle import load_bundle
from napari_itaclip.cli import EXIT_FAILURES, EXIT_OK, EXIT_USAGE, main
from napari_itaclip.colors import class_colors_uint8
from napari_itaclip.evaluation import mean_iou
from napari_itaclip.io import LABEL_METADATA_KEY
from napari_itaclip.labels import label_offset

CLASSES = "sky; cat, kitten; dog"
N_CLASSES = 3
FAST = ["--device", "cpu", "--preset", "fast"]


@pytest.fixture
def model_args(tiny_weights):
    return ["--pretrained", str(tiny_weights), *FAST]


def random_rgb(seed: int, shape=(40, 50)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.zeros((*shape, 3), np.uint8)
    image[:, : shape[1] // 2] = (200, 40, 40)
    image[:, shape[1] // 2 :] = (30, 60, 220)
    return np.clip(image + rng.integers(0, 40, image.shape), 0, 255).astype(np.uint8)


def save_rgb(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


@pytest.fixture
def image_folder(tmp_path):
    """Good images of three kinds, a broken one, and files a folder scan must pass over."""
    folder = tmp_path / "images"
    save_rgb(folder / "photo.png", random_rgb(0))
    save_rgb(folder / "nested" / "grey.jpg", random_rgb(1)[..., 0])
    grey16 = np.random.default_rng(2).integers(0, 60000, (40, 50)).astype(np.uint16)
    tifffile.imwrite(folder / "nested" / "scan.tif", grey16[None])  # a one-page stack
    (folder / "broken.png").write_bytes(b"this is not a PNG")
    (folder / "notes.txt").write_text("not an image")
    save_rgb(folder / ".hidden" / "skipped.png", random_rgb(3))
    return folder


def outputs_of(out: Path, stem: str) -> list[Path]:
    return [
        out / f"{stem}_labels.png",
        out / f"{stem}.itaclip",
        out / f"{stem}_overlay.png",
    ]


def test_segment_folder_writes_outputs_and_reports_broken_images(
    image_folder, tmp_path, model_args, capsys
):
    out = tmp_path / "out"
    missing = tmp_path / "no-such-image.png"
    code = main(
        ["segment", str(image_folder), str(missing), "--classes", CLASSES, "--out", str(out)]
        + model_args
    )
    captured = capsys.readouterr()

    assert code == EXIT_FAILURES
    error_lines = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 2
    assert any("broken.png" in line and "cannot decode" in line for line in error_lines)
    assert any(str(missing) in line and "no such file" in line for line in error_lines)
    assert "Traceback" not in captured.err
    assert "3 segmented, 0 skipped, 2 failed" in captured.out

    expected = {
        *outputs_of(out, "photo"),
        *outputs_of(out / "nested", "grey"),
        *outputs_of(out / "nested", "scan"),
    }
    assert {path for path in out.rglob("*") if path.is_file()} == expected

    labels_png = Image.open(out / "photo_labels.png")
    assert labels_png.mode == "P"
    assert labels_png.size == (50, 40)
    palette = np.array(labels_png.getpalette()[: 3 * N_CLASSES]).reshape(N_CLASSES, 3)
    # No background class (fast preset): class id c has label id c + 1's colour in napari.
    np.testing.assert_array_equal(palette, class_colors_uint8(N_CLASSES + 1)[1:])
    class_ids = np.asarray(labels_png)
    assert class_ids.max() < N_CLASSES
    stored = json.loads(labels_png.text[LABEL_METADATA_KEY])
    assert stored == {"class_names": ["sky", "cat", "dog"], "background": False}

    bundle = load_bundle(out / "photo.itaclip")
    assert bundle.class_names == ["sky", "cat", "dog"]
    assert bundle.name == "photo.png"
    np.testing.assert_array_equal(bundle.label_image, class_ids + label_offset(False))

    overlay = np.asarray(Image.open(out / "photo_overlay.png"))
    assert overlay.shape == (40, 50, 3)
    assert not np.array_equal(overlay, random_rgb(0))

    # The text features computed by the run are in the cache that `cache` reports.
    assert main(["cache"]) == EXIT_OK
    assert " 0 text-feature entries" not in capsys.readouterr().out


def test_existing_outputs_are_skipped_unless_overwrite(tmp_path, model_args, capsys):
    folder = tmp_path / "photos"
    save_rgb(folder / "photo.png", random_rgb(0))
    out = folder / "out"  # inside the input folder: its files must never become inputs
    args = ["segment", str(folder), "--classes", CLASSES, "--out", str(out), *model_args]
    assert main(args) == EXIT_OK
    labels, bundle, overlay = outputs_of(out, "photo")
    first_labels = np.asarray(Image.open(labels))
    capsys.readouterr()

    labels.write_bytes(b"kept")
    assert main(args) == EXIT_OK
    assert "0 segmented, 1 skipped, 0 failed" in capsys.readouterr().out
    assert labels.read_bytes() == b"kept"

    # A missing output is written; the existing ones are left alone.
    overlay.unlink()
    bundle_bytes = bundle.read_bytes()
    assert main(args) == EXIT_OK
    assert overlay.is_file()
    assert labels.read_bytes() == b"kept"
    assert bundle.read_bytes() == bundle_bytes

    assert main([*args, "--overwrite"]) == EXIT_OK
    np.testing.assert_array_equal(np.asarray(Image.open(labels)), first_labels)
    assert not list(out.glob(".tmp-*"))


def test_paper_preset_with_background_and_aux_text(tmp_path, tiny_weights):
    image = save_rgb(tmp_path / "photo.png", random_rgb(4, (24, 30)))
    aux = tmp_path / "aux.txt"
    aux.write_text("cat >=a small furry pet\ndog >=a loyal animal that barks\n")
    out = tmp_path / "out"
    # voc21 as the paper runs it, except a 224-pixel short side (3 windows instead of 40),
    # which keeps the five views, stride 28, PAMR and both thresholds.
    files = ["--aux-text", str(aux), "--out", str(out), "--pretrained", str(tiny_weights)]
    options = "--preset voc21 --short-side 224 --format tif --format bundle --device cpu -q"
    classes = ["--classes", "background, sky, wall; cat; dog"]
    code = main(["segment", str(image), *classes, *files, *options.split()])
    assert code == EXIT_OK
    assert not (out / "photo_labels.png").exists()

    with tifffile.TiffFile(out / "photo_labels.tif") as tif:
        class_ids = tif.asarray()
        stored = tif.shaped_metadata[0][LABEL_METADATA_KEY]
    assert class_ids.shape == (24, 30) and class_ids.max() < 3
    assert stored == {"class_names": ["background", "cat", "dog"], "background": True}
    parameters = load_bundle(out / "photo.itaclip").parameters
    assert parameters["short_side"] == 224
    assert (parameters["stride"], parameters["image_engineering"]) == (28, True)
    assert (parameters["c_def"], parameters["area_thd"], parameters["logit_scale"]) == (
        0.05,
        0.1,
        60,
    )
    assert "cat >=a small furry pet" in parameters["aux_text"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--classes", "missing.txt"], "class list file not found: missing.txt"),
        (["--classes", "sky; cat; cat"], "duplicate class name"),
        (["--classes", "sky; cat", "--stride", "500"], "stride (500) must not be larger"),
        (["--classes", "sky; cat", "--aux-text", "nowhere.txt"], "auxiliary text file not found"),
        (["--classes", "sky; cat", "--device", "cuda:7"], "cuda"),
        (["--classes", "sky; cat", "--pretrained", "/no/such/weights.pt"], "weights file not"),
    ],
)
def test_setup_errors_exit_2_with_one_line(tmp_path, capsys, options, message):
    image = save_rgb(tmp_path / "photo.png", random_rgb(0))
    code = main(["segment", str(image), "--out", str(tmp_path / "out"), *options])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_aux_text_must_cover_every_class(tmp_path, capsys):
    image = save_rgb(tmp_path / "photo.png", random_rgb(0))
    aux = tmp_path / "aux.txt"
    aux.write_text("cat >=a small furry pet\n")
    options = ["--classes", "sky; cat; dog", "--preset", "voc21", "--aux-text", str(aux)]
    code = main(["segment", str(image), *options])
    assert code == EXIT_USAGE
    assert "no line for 1 class(es): dog" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["segment", "image.png"],  # --classes is required
        ["segment", "image.png", "--classes", "a; b", "--preset", "nope"],
        ["segment", "image.png", "--classes", "a; b", "--stride", "0"],
        ["evaluate", "--images", "x", "--classes", "a; b"],  # --labels is required
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == EXIT_USAGE
    assert "usage: napari-itaclip" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--prob-thd", "2"], "argument --prob-thd: prob_thd must be in [0, 1], got 2.0"),
        (["--short-side", "8"], "argument --short-side: short_side must be in [16, 4096], got 8"),
        (["--stride", "2.5"], "argument --stride: expected an integer, got '2.5'"),
        (["--area-thd", "off"], "argument --area-thd: expected a number or \"none\", got 'off'"),
        (["--pamr-dilations", "8,x"], "expected comma-separated integers, got '8,x'"),
        (["--pamr-dilations", "8,99"], "pamr_dilations must be in [1, 64], got (8, 99)"),
    ],
)
def test_parameter_values_are_checked_against_their_range(option, message, capsys):
    assert main(["segment", "image.png", "--classes", "a; b", *option]) == EXIT_USAGE
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["segment"], ["evaluate"], ["info"], ["cache"]])
def test_help_everywhere(command, capsys):
    assert main([*command, "--help"]) == EXIT_OK
    assert "usage: napari-itaclip" in capsys.readouterr().out


def test_folder_without_images_fails(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["segment", str(tmp_path / "empty"), "--classes", "a; b"]) == EXIT_FAILURES
    assert "no images found" in capsys.readouterr().err


def test_segment_a_tiff_stack_writes_one_stacked_result(tmp_path, model_args, capsys):
    stack = np.stack([random_rgb(seed)[..., seed] for seed in range(3)])  # (3, 40, 50)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack, photometric="minisblack")
    out = tmp_path / "out"
    assert main(["segment", str(path), "--classes", CLASSES, "--out", str(out), *model_args]) == 0
    captured = capsys.readouterr()
    assert "1 segmented, 0 skipped, 0 failed" in captured.out
    assert captured.err.count("label images of stacks are TIFFs") == 1
    labels = tifffile.imread(out / "stack_labels.tif")
    assert labels.shape == (3, 40, 50) and labels.max() < N_CLASSES
    assert load_bundle(out / "stack.itaclip").label_image.shape == (3, 40, 50)
    assert not (out / "stack_labels.png").exists()


@pytest.fixture
def model_refused(monkeypatch):
    """Loading a model fails the test: checks must answer before."""
    import napari_itaclip.cli as cli

    def refuse(args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cli, "load_segmenter", refuse)


def test_out_that_is_a_file_exits_2_before_the_model_loads(tmp_path, model_refused, capsys):
    image = save_rgb(tmp_path / "photo.png", random_rgb(0))
    taken = tmp_path / "results"
    taken.write_text("not a folder")
    code = main(["segment", str(image), "--classes", CLASSES, "--out", str(taken)])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert err == f"error: output folder {taken} is a file\n"


def test_json_that_is_a_folder_exits_2_before_the_model_loads(tmp_path, model_refused, capsys):
    images, labels = tmp_path / "images", tmp_path / "labels"
    save_rgb(images / "a.png", random_rgb(0))
    truth = np.zeros((40, 50), np.uint8)
    labels.mkdir()
    Image.fromarray(truth).save(labels / "a.png")
    folders = ["--images", str(images), "--labels", str(labels), "--json", str(tmp_path)]
    assert main(["evaluate", *folders, "--classes", "a; b"]) == EXIT_USAGE
    assert capsys.readouterr().err == f"error: output file {tmp_path} is a folder\n"


# ----------------------------------------------------------------------------- evaluate
@pytest.fixture(scope="module")
def predicted_dataset(tmp_path_factory, tiny_weights):
    """Two images in a Cityscapes-like layout and the tiny model's predictions for them.

    Module-scoped (one segmentation run for every evaluate test), so it sets its own cache
    folder: the per-test one does not exist yet.
    """
    folder = tmp_path_factory.mktemp("dataset")
    images = folder / "leftImg8bit"
    paths = [
        save_rgb(images / "town" / f"town_{i}_leftImg8bit.png", random_rgb(10 + i))
        for i in range(2)
    ]
    out = folder / "predictions"
    files = ["--out", str(out), "--pretrained", str(tiny_weights)]
    args = ["segment", *map(str, paths), "--classes", CLASSES, *files, "--no-overlay", "-q", *FAST]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NAPARI_ITACLIP_CACHE", str(folder / "cache"))
        assert main(args) == EXIT_OK
    predictions = [np.asarray(Image.open(out / f"{p.stem}_labels.png")) for p in paths]
    return images, predictions


def write_labels(folder: Path, truths: list[np.ndarray]) -> Path:
    for i, truth in enumerate(truths):
        path = folder / "town" / f"town_{i}_gtFine_labelTrainIds.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(truth.astype(np.uint8)).save(path)
    return folder


def evaluate_args(images, labels, json_path, model_args):
    folders = ["--images", str(images), "--labels", str(labels), "--json", str(json_path)]
    suffixes = ["--image-suffix", "_leftImg8bit.png", "--label-suffix", "_gtFine_labelTrainIds.png"]
    return ["evaluate", *folders, *suffixes, "--classes", CLASSES, "-q", *model_args]


def test_evaluate_ground_truth_equal_to_prediction_scores_one(
    predicted_dataset, tmp_path, model_args, capsys
):
    images, predictions = predicted_dataset
    labels = write_labels(tmp_path / "gtFine", predictions)
    report_path = tmp_path / "metrics.json"
    assert main(evaluate_args(images, labels, report_path, model_args)) == EXIT_OK
    out = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert report["miou"] == 1.0 and report["pixel_accuracy"] == 1.0
    assert report["images_evaluated"] == 2 and report["failed"] == []
    for row in report["classes"]:
        present = row["ground_truth_pixels"] > 0
        assert row["iou"] == (1.0 if present else None)
    assert "mIoU 100.00" in out and "2 images, 0 failed" in out


def test_evaluate_accumulates_the_hand_built_confusion_matrix(
    predicted_dataset, tmp_path, model_args
):
    images, (first, second) = predicted_dataset
    # First image: the truth is the prediction, but its top 5 rows are ignored (255).
    first_truth = first.copy()
    first_truth[:5] = 255
    # Second image: the top 10 rows are truly the next class (c + 1 mod 3) of the prediction c.
    second_truth = second.copy()
    second_truth[:10] = (second[:10] + 1) % N_CLASSES
    expected = np.zeros((N_CLASSES, N_CLASSES), np.int64)
    for c in range(N_CLASSES):
        expected[c, c] = np.count_nonzero(first[5:] == c) + np.count_nonzero(second[10:] == c)
        expected[(c + 1) % N_CLASSES, c] = np.count_nonzero(second[:10] == c)
    labels = write_labels(tmp_path / "gtFine", [first_truth, second_truth])
    report_path = tmp_path / "metrics.json"

    assert main(evaluate_args(images, labels, report_path, model_args)) == EXIT_OK
    report = json.loads(report_path.read_text())
    np.testing.assert_array_equal(report["confusion_matrix"], expected)
    assert report["miou"] == pytest.approx(mean_iou(expected))
    counted = 40 * 50 * 2 - 5 * 50
    assert report["pixel_accuracy"] == pytest.approx((counted - 10 * 50) / counted)
    assert [row["ground_truth_pixels"] for row in report["classes"]] == expected.sum(1).tolist()


def test_evaluate_with_id_list_limit_and_bad_ground_truth(
    predicted_dataset, tmp_path, model_args, capsys
):
    images, (first, second) = predicted_dataset
    bad = second.copy()
    bad[0, 0] = 7  # not a class of the 3-class list, not the ignore index
    labels = write_labels(tmp_path / "gtFine", [first, bad])
    id_list = tmp_path / "val.txt"
    id_list.write_text("town_1\ntown_0\ntown_9\n")
    report_path = tmp_path / "metrics.json"
    args = evaluate_args(images, labels, report_path, model_args) + ["--list", str(id_list)]

    assert main(args) == EXIT_FAILURES
    err = capsys.readouterr().err
    assert "ids 7 that are neither class indices 0..2" in err
    report = json.loads(report_path.read_text())
    assert report["images_evaluated"] == 1
    assert [failure["id"] for failure in report["failed"]] == ["town_1", "town_9"]
    assert "no image file with this id" in report["failed"][1]["error"]
    assert report["miou"] == 1.0

    assert main([*args, "--limit", "1"]) == EXIT_FAILURES  # town_1 only: the bad one
    assert json.loads(report_path.read_text())["images_evaluated"] == 0


def test_evaluate_reduce_zero_label(predicted_dataset, tmp_path, model_args):
    images, predictions = predicted_dataset
    # Context-59 style: the stored ids are class id + 1 and 0 marks unlabelled pixels.
    stored = [prediction + 1 for prediction in predictions]
    stored[0][:3] = 0
    labels = write_labels(tmp_path / "gtFine", stored)
    report_path = tmp_path / "metrics.json"
    args = evaluate_args(images, labels, report_path, model_args) + ["--reduce-zero-label"]
    assert main(args) == EXIT_OK
    report = json.loads(report_path.read_text())
    assert report["miou"] == 1.0
    assert sum(row["ground_truth_pixels"] for row in report["classes"]) == 2 * 40 * 50 - 3 * 50


def test_evaluate_matching_problems_exit_2_before_loading_the_model(tmp_path, capsys):
    images, labels = tmp_path / "images", tmp_path / "labels"
    save_rgb(images / "a.png", random_rgb(0))
    save_rgb(labels / "b.png", np.zeros((40, 50, 3), np.uint8))
    folders = ["--images", str(images), "--labels", str(labels)]
    args = ["evaluate", *folders, "--classes", "a; b", "--pretrained", "/no/such/weights.pt"]
    assert main(args) == EXIT_USAGE
    assert "no image under" in capsys.readouterr().err
    save_rgb(images / "sub" / "a.jpg", random_rgb(0))
    assert main(args) == EXIT_USAGE
    assert "two files under" in capsys.readouterr().err


# ------------------------------------------------------------------------ info and cache
def test_info_names_versions_devices_cache_and_weights(tmp_path, tiny_weights, monkeypatch, capsys):
    monkeypatch.setenv("NAPARI_ITACLIP_WEIGHTS", str(tiny_weights))
    assert main(["info"]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"napari-itaclip {__version__}" in out
    devices = next(line for line in out.splitlines() if line.startswith("devices: "))
    assert devices.endswith("cpu")
    assert str(tmp_path / "cache" / "text") in out  # the test's NAPARI_ITACLIP_CACHE
    assert f"{tiny_weights} (present)" in out


def test_info_names_the_gpus_where_there_are_some(monkeypatch):
    import torch

    from napari_itaclip import engine
    from napari_itaclip.cli.info import device_names

    monkeypatch.setattr(engine, "device_choices", lambda: ["cuda", "cpu"])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "NVIDIA H100")
    assert device_names() == ["cuda (NVIDIA H100)", "cpu"]
    monkeypatch.setattr(engine, "device_choices", lambda: ["cpu"])
    assert device_names() == ["cpu"]


def test_cache_shows_size_and_clears_only_text_features(tmp_path, capsys):
    root = tmp_path / "cache"  # NAPARI_ITACLIP_CACHE of this test
    (root / "text" / "model").mkdir(parents=True)
    (root / "text" / "model" / "a.npy").write_bytes(b"x" * 2048)
    (root / "other.txt").write_text("not ours")
    (root / "text" / "model" / "b.npy.tmp").write_bytes(b"x" * 1024)  # an interrupted write
    assert main(["cache"]) == EXIT_OK
    assert "1 text-feature entries, 3.0 KB" in capsys.readouterr().out
    assert main(["cache", "--clear"]) == EXIT_OK
    assert not (root / "text").exists()
    assert (root / "other.txt").exists()
    assert main(["cache"]) == EXIT_OK
    assert "0 text-feature entries, 0 B" in capsys.readouterr().out.splitlines()[-1]


# -------------------------------------------------------------------------- console script
def console_script() -> Path:
    script = Path(sys.executable).parent / (
        "napari-itaclip.exe" if os.name == "nt" else "napari-itaclip"
    )
    if not script.exists():
        pytest.skip("the napari-itaclip console script is not installed next to this python")
    return script


def test_console_script_runs_and_returns_the_exit_code(image_folder, tmp_path, tiny_weights):
    script = console_script()
    version = subprocess.run([script, "--version"], capture_output=True, text=True, check=False)
    assert (version.returncode, version.stdout.strip()) == (0, f"napari-itaclip {__version__}")

    images = [image_folder / "photo.png", image_folder / "broken.png"]
    files = ["--out", tmp_path / "out", "--pretrained", tiny_weights]
    argv = [script, "segment", *images, "--classes", CLASSES, *files, *FAST, "--debug"]
    run = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert run.returncode == EXIT_FAILURES, run.stderr
    assert "Traceback" in run.stderr  # --debug shows where the broken image failed
    assert (tmp_path / "out" / "photo_labels.png").is_file()

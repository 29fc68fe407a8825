"""Metric maths against hand-computed confusion matrices (mmseg's IoUMetric conventions)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from napari_itaclip.evaluation import (
    Dataset,
    Evaluation,
    confusion_matrix,
    evaluate_dataset,
    evaluation_report,
    format_table,
    iou_per_class,
    match_dataset,
    mean_iou,
    pixel_accuracy,
    reduce_zero_label,
)

# Six pixels, one ignored. Counted (truth, prediction) pairs: (0,0) (0,1) (1,1) (1,2) (2,2).
TRUTH = np.array([[0, 0, 1], [1, 2, 255]], np.uint8)
PREDICTION = np.array([[0, 1, 1], [2, 2, 0]], np.uint8)
EXPECTED_MATRIX = np.array([[1, 1, 0], [0, 1, 1], [0, 0, 1]])
# IoU = TP / (row sum + column sum - TP): 1/(2+1-1), 1/(2+2-1), 1/(1+2-1).
EXPECTED_IOU = [1 / 2, 1 / 3, 1 / 2]


def test_confusion_matrix_counts_rows_as_truth_and_skips_ignored_pixels():
    matrix = confusion_matrix(TRUTH, PREDICTION, 3, ignore_index=255)
    np.testing.assert_array_equal(matrix, EXPECTED_MATRIX)
    assert matrix.dtype == np.int64


def test_iou_miou_and_pixel_accuracy_of_the_hand_computed_matrix():
    np.testing.assert_allclose(iou_per_class(EXPECTED_MATRIX), EXPECTED_IOU)
    assert mean_iou(EXPECTED_MATRIX) == pytest.approx(4 / 9)
    assert pixel_accuracy(EXPECTED_MATRIX) == pytest.approx(3 / 5)


def test_class_with_zero_union_has_nan_iou_and_is_left_out_of_the_mean():
    matrix = confusion_matrix(TRUTH, PREDICTION, 4, ignore_index=255)
    iou = iou_per_class(matrix)
    assert math.isnan(iou[3])
    np.testing.assert_allclose(iou[:3], EXPECTED_IOU)
    assert mean_iou(matrix) == pytest.approx(4 / 9)


def test_class_predicted_but_absent_from_truth_counts_with_iou_zero():
    prediction = PREDICTION.copy()
    prediction[0, 0] = 3  # the one correct class-0 pixel becomes a false class 3
    matrix = confusion_matrix(TRUTH, prediction, 4, ignore_index=255)
    iou = iou_per_class(matrix)
    assert iou[0] == 0 and iou[3] == 0
    # Class 0: TP 0. Class 1: 1/(2+2-1). Class 2: 1/(1+2-1). Class 3: 0.
    assert mean_iou(matrix) == pytest.approx((0 + 1 / 3 + 1 / 2 + 0) / 4)


def test_perfect_prediction_gives_miou_and_accuracy_one():
    truth = np.array([[0, 1], [2, 255]])
    matrix = confusion_matrix(truth, np.where(truth == 255, 0, truth), 3)
    assert mean_iou(matrix) == 1.0
    assert pixel_accuracy(matrix) == 1.0


def test_dataset_matrix_is_the_sum_of_image_matrices_not_a_mean_of_image_scores():
    second_truth = np.array([[2, 2], [2, 2]])
    second_prediction = np.array([[2, 2], [2, 0]])
    total = confusion_matrix(TRUTH, PREDICTION, 3) + confusion_matrix(
        second_truth, second_prediction, 3
    )
    kept = TRUTH.ravel() != 255
    joined_truth = np.concatenate([TRUTH.ravel()[kept], second_truth.ravel()])
    joined_prediction = np.concatenate([PREDICTION.ravel()[kept], second_prediction.ravel()])
    np.testing.assert_array_equal(total, confusion_matrix(joined_truth, joined_prediction, 3))
    # Class 0: TP 1, row 2, column 2 -> 1/3. Class 1: 1/3. Class 2: TP 4, row 5, column 5 -> 4/6.
    assert mean_iou(total) == pytest.approx((1 / 3 + 1 / 3 + 4 / 6) / 3)
    # The second image alone: class 0 IoU 0 (one false pixel), class 2 IoU 3/4, class 1 absent.
    second_miou = mean_iou(confusion_matrix(second_truth, second_prediction, 3))
    assert second_miou == pytest.approx(3 / 8)
    assert mean_iou(total) != pytest.approx((4 / 9 + second_miou) / 2)


def test_no_ignore_index_counts_every_pixel():
    truth = np.array([0, 1, 1])
    matrix = confusion_matrix(truth, np.array([0, 0, 1]), 2, ignore_index=None)
    np.testing.assert_array_equal(matrix, [[1, 0], [1, 1]])


def test_empty_matrix_gives_nan_scores():
    matrix = confusion_matrix(np.full((2, 2), 255), np.zeros((2, 2), int), 3)
    assert matrix.sum() == 0
    assert math.isnan(mean_iou(matrix))
    assert math.isnan(pixel_accuracy(matrix))


def test_truth_ids_outside_the_class_list_are_an_error_naming_them():
    with pytest.raises(ValueError, match=r"ids 7 .*0\.\.2 nor the ignore index 255"):
        confusion_matrix(np.array([0, 7, 255]), np.array([0, 1, 2]), 3)
    with pytest.raises(ValueError, match="ids 255"):
        confusion_matrix(np.array([0, 255]), np.array([0, 1]), 3, ignore_index=None)


def test_prediction_ids_outside_the_class_list_are_an_error():
    with pytest.raises(ValueError, match=r"prediction holds ids 3 outside 0\.\.2"):
        confusion_matrix(np.array([0, 1]), np.array([0, 3]), 3)


def test_shape_and_dtype_mismatches_are_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(np.zeros((2, 3), int), np.zeros((3, 2), int), 2)
    with pytest.raises(TypeError, match="integer class ids"):
        confusion_matrix(np.zeros(3), np.zeros(3, int), 2)


def test_reduce_zero_label_shifts_ids_down_and_ignores_zero():
    truth = np.array([[0, 1, 2], [255, 5, 0]], np.uint8)
    np.testing.assert_array_equal(reduce_zero_label(truth), [[255, 0, 1], [255, 4, 255]])


# ------------------------------------------------- the evaluate command's steps, from Python
def save_grey(path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def test_match_dataset_pairs_ids_and_notes_the_unmatched(tmp_path):
    for name in ("a", "b", "c"):
        save_grey(tmp_path / "images" / f"{name}_img.png", TRUTH)
    for name in ("b", "a", "z"):
        save_grey(tmp_path / "labels" / "sub" / f"{name}_gt.png", TRUTH)
    dataset = Dataset(tmp_path / "images", tmp_path / "labels", None, "_img.png", "_gt.png")
    pairs, note = match_dataset(dataset)
    assert [(i, image.name, label.name) for i, image, label in pairs] == [
        ("a", "a_img.png", "a_gt.png"),
        ("b", "b_img.png", "b_gt.png"),
    ]
    assert note == "1 images without a label and 1 labels without an image are not evaluated"
    (tmp_path / "val.txt").write_text("c\n\nb\n")
    listed = Dataset(**{**vars(dataset), "id_list": tmp_path / "val.txt", "limit": 1})
    assert match_dataset(listed) == ([("c", tmp_path / "images" / "c_img.png", None)], None)
    with pytest.raises(ValueError, match="cannot read the id list file"):
        match_dataset(Dataset(**{**vars(dataset), "id_list": tmp_path / "nope.txt"}))
    with pytest.raises(ValueError, match="no image under .* has a label"):
        match_dataset(Dataset(tmp_path / "images", tmp_path / "labels"))


class Oracle:
    """A stand-in segmenter whose prediction is PREDICTION, whatever the image."""

    def segment(self, image, request, progress=None):
        return SimpleNamespace(labels=PREDICTION)


def test_evaluate_dataset_sums_matrices_and_records_failures(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    for name in ("a", "b"):
        save_grey(images / f"{name}.png", np.zeros(TRUTH.shape))
        save_grey(labels / f"{name}.png", TRUTH)
    save_grey(images / "c.png", np.zeros((4, 4)))  # not the label's size
    save_grey(labels / "c.png", TRUTH)
    dataset = Dataset(images, labels)
    pairs, _ = match_dataset(dataset)
    request = SimpleNamespace(n_classes=3, class_names=["x", "y", "z"])
    evaluation = evaluate_dataset(pairs, request, segmenter=Oracle(), dataset=dataset)
    np.testing.assert_array_equal(evaluation.matrix, 2 * EXPECTED_MATRIX)
    assert evaluation.evaluated == 2
    assert evaluation.failed == [
        {"id": "c", "error": "label size (2, 3) differs from image size (4, 4)"}
    ]

    report = evaluation_report(
        evaluation, request.class_names, dataset=dataset, parameters={"preset": "fast"}
    )
    assert report["miou"] == pytest.approx(np.mean(EXPECTED_IOU))
    assert report["pixel_accuracy"] == pytest.approx(3 / 5)
    assert [row["ground_truth_pixels"] for row in report["classes"]] == [4, 4, 2]
    assert report["dataset"]["images"] == str(images) and report["dataset"]["list"] is None
    table = format_table(report)
    assert table.splitlines()[1].split() == ["0", "x", "50.00", "4"]
    assert table.endswith("mIoU 44.44 over 3 classes, pixel accuracy 60.00, 2 images, 1 failed")


def test_report_of_nothing_counted_has_no_scores():
    evaluation = Evaluation(np.zeros((2, 2), np.int64))
    report = evaluation_report(evaluation, ["x", "y"], dataset=Dataset("i", "l"), parameters={})
    assert report["miou"] is None and report["pixel_accuracy"] is None
    assert format_table(report).endswith(
        "mIoU - over 0 classes, pixel accuracy -, 0 images, 0 failed"
    )

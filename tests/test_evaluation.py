"""Metric maths against hand-computed confusion matrices (mmseg's IoUMetric conventions)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_itaclip.evaluation import (
    confusion_matrix,
    iou_per_class,
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

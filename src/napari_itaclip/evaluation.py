"""Segmentation metrics, numpy only: confusion matrix, per-class IoU, mIoU, pixel accuracy.

The conventions are those of mmsegmentation's `IoUMetric`, with which the ITACLIP paper's
numbers were computed (docs/evaluation.md):

- Ground-truth pixels equal to the ignore index count nowhere (neither as truth nor as
  prediction).
- Counts are summed over the whole dataset into one confusion matrix and IoU is computed once
  at the end; it is not a mean of per-image IoUs. Summing per-image matrices keeps memory flat.
- IoU of class c = TP / (TP + FP + FN) = matrix[c, c] / (row c sum + column c sum - matrix[c, c]).
- A class whose union is 0 (never in the ground truth and never predicted) has no IoU (NaN) and
  is left out of the mean: mIoU is the NaN-ignoring mean. A class that is predicted but absent
  from the ground truth has IoU 0 and does count.
- Pixel accuracy = correctly labelled pixels / non-ignored pixels (mmseg's "aAcc").
"""

from __future__ import annotations

import numpy as np


def _check_integer(array: np.ndarray, what: str) -> None:
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise TypeError(f"{what} must hold integer class ids, got dtype {array.dtype}")


def confusion_matrix(
    ground_truth, prediction, n_classes: int, ignore_index: int | None = 255
) -> np.ndarray:
    """(n_classes, n_classes) int64 pixel counts: row = true class, column = predicted class.

    Ground-truth ids must be class indices 0..n_classes-1 or `ignore_index`; any other value
    raises ValueError (it means the label layout does not match the class list). Predictions
    must be class indices.
    """
    ground_truth = np.asarray(ground_truth)
    prediction = np.asarray(prediction)
    if not isinstance(n_classes, int) or n_classes < 1:
        raise ValueError(f"n_classes must be a positive integer, got {n_classes!r}")
    if ground_truth.shape != prediction.shape:
        raise ValueError(
            f"ground truth {ground_truth.shape} and prediction {prediction.shape} differ in shape"
        )
    _check_integer(ground_truth, "ground truth")
    _check_integer(prediction, "prediction")
    if ignore_index is None:
        truth, predicted = ground_truth.ravel(), prediction.ravel()
    else:
        kept = ground_truth != ignore_index
        truth, predicted = ground_truth[kept], prediction[kept]
    truth = truth.astype(np.int64)
    predicted = predicted.astype(np.int64)
    bad_truth = np.unique(truth[(truth < 0) | (truth >= n_classes)])
    if bad_truth.size:
        ignore = "" if ignore_index is None else f" nor the ignore index {ignore_index}"
        raise ValueError(
            f"ground truth holds ids {', '.join(map(str, bad_truth[:10]))} that are neither class "
            f"indices 0..{n_classes - 1}{ignore}: does the label layout match the class list?"
        )
    bad_prediction = np.unique(predicted[(predicted < 0) | (predicted >= n_classes)])
    if bad_prediction.size:
        raise ValueError(
            f"prediction holds ids {', '.join(map(str, bad_prediction[:10]))} outside "
            f"0..{n_classes - 1}"
        )
    counts = np.bincount(truth * n_classes + predicted, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes)


def reduce_zero_label(ground_truth, ignore_index: int = 255) -> np.ndarray:
    """mmseg's `reduce_zero_label`: id 0 becomes `ignore_index`, every other id k becomes k - 1.

    Used where id 0 means "unlabelled" rather than a class (Pascal Context 59 from the 60-id
    labels). Pixels already at `ignore_index` stay there.
    """
    ground_truth = np.asarray(ground_truth)
    _check_integer(ground_truth, "ground truth")
    reduced = ground_truth.astype(np.int64) - 1
    reduced[(ground_truth == 0) | (ground_truth == ignore_index)] = ignore_index
    return reduced


def iou_per_class(matrix) -> np.ndarray:
    """(C,) float64 IoU per class; NaN for a class whose union is 0."""
    matrix = np.asarray(matrix, dtype=np.float64)
    intersection = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - intersection
    iou = np.full(len(intersection), np.nan)
    present = union > 0
    iou[present] = intersection[present] / union[present]
    return iou


def mean_iou(matrix) -> float:
    """Mean IoU over the classes with a non-zero union; NaN if there is none."""
    iou = iou_per_class(matrix)
    present = ~np.isnan(iou)
    return float(iou[present].mean()) if present.any() else float("nan")


def pixel_accuracy(matrix) -> float:
    """Correct pixels / counted pixels; NaN if nothing was counted."""
    matrix = np.asarray(matrix)
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else float("nan")

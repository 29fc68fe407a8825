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

Below the metrics, what `napari-itaclip evaluate` runs, callable from Python: a `Dataset` of
image and label folders, `match_dataset` (which image goes with which label),
`evaluate_dataset` (segment and score them), `evaluation_report` and `format_table`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

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


# ----------------------------------------------------------------------- a dataset on disk
@dataclass(frozen=True)
class Dataset:
    """Image and ground-truth folders, how their files pair up, and how labels are read.

    Files pair up by id: the file name less `image_suffix` / `label_suffix`, or less its
    extension when no suffix is given (`io.index_files`). id_list: a file of the ids to
    evaluate, one per line (VOC's val.txt); without it, every id in both folders. limit: the
    first ids only. Ground truth equal to `ignore_index` is not counted; `reduce_zero_label`
    as in `reduce_zero_label`.
    """

    images: Path
    labels: Path
    id_list: Path | None = None
    image_suffix: str | None = None
    label_suffix: str | None = None
    ignore_index: int = 255
    reduce_zero_label: bool = False
    limit: int | None = None

    def record(self) -> dict:
        """What an evaluation report says about the dataset."""
        return {
            "images": str(self.images),
            "labels": str(self.labels),
            "list": None if self.id_list is None else str(self.id_list),
            "image_suffix": self.image_suffix,
            "label_suffix": self.label_suffix,
            "ignore_index": self.ignore_index,
            "reduce_zero_label": self.reduce_zero_label,
            "limit": self.limit,
        }


def match_dataset(
    dataset: Dataset,
) -> tuple[list[tuple[str, Path | None, Path | None]], str | None]:
    """(id, image, label) to evaluate, in order, and a note on unmatched files.

    With an id list, every listed id is evaluated and a missing file fails that id; without
    it, every id present in both folders is, sorted. ValueError when nothing matches, a
    folder or the list cannot be read, or two files share an id.
    """
    from .io import index_files

    images = index_files(dataset.images, dataset.image_suffix)
    labels = index_files(dataset.labels, dataset.label_suffix)
    note = None
    if dataset.id_list is not None:
        try:
            text = Path(dataset.id_list).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the id list file {dataset.id_list}: {exc}") from None
        ids = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        ids = sorted(images.keys() & labels.keys())
        if not ids:
            raise ValueError(
                f"no image under {dataset.images} has a label under {dataset.labels} with the "
                "same id; check --image-suffix/--label-suffix (docs/evaluation.md)"
            )
        unmatched_images, unmatched_labels = len(images) - len(ids), len(labels) - len(ids)
        if unmatched_images or unmatched_labels:
            note = (
                f"{unmatched_images} images without a label and {unmatched_labels} labels without "
                "an image are not evaluated"
            )
    if dataset.limit is not None:
        ids = ids[: dataset.limit]
    return [(image_id, images.get(image_id), labels.get(image_id)) for image_id in ids], note


def evaluate_image(
    segmenter, request, image_path, label_path, dataset: Dataset, progress=None
) -> np.ndarray:
    """The confusion matrix of one image (labels are read and checked before segmenting)."""
    from .io import read_image, read_label_image

    if image_path is None or label_path is None:
        raise ValueError(f"no {'image' if image_path is None else 'label'} file with this id")
    truth = read_label_image(label_path)
    if dataset.reduce_zero_label:
        truth = reduce_zero_label(truth, dataset.ignore_index)
    image = read_image(image_path)
    if truth.shape != image.shape[:2]:
        raise ValueError(f"label size {truth.shape} differs from image size {image.shape[:2]}")
    result = segmenter.segment(image, request, progress=progress)
    return confusion_matrix(truth, result.labels, request.n_classes, dataset.ignore_index)


@dataclass
class Evaluation:
    """The summed confusion matrix of the images evaluated, and the ones that failed."""

    matrix: np.ndarray
    evaluated: int = 0
    failed: list[dict] = field(default_factory=list)  # {"id": ..., "error": ...}


def evaluate_dataset(pairs, request, *, segmenter, dataset: Dataset, progress=None) -> Evaluation:
    """Segment and score each (id, image, label) of `match_dataset`; a failing image is
    recorded and skipped. progress: a `batch.BatchProgress`."""
    from .batch import BatchProgress, describe_error

    progress = progress or BatchProgress()
    n_classes = request.n_classes
    evaluation = Evaluation(np.zeros((n_classes, n_classes), np.int64))
    for image_id, image_path, label_path in pairs:
        progress.start(image_id)
        try:
            evaluation.matrix += evaluate_image(
                segmenter, request, image_path, label_path, dataset, progress.engine
            )
            evaluation.evaluated += 1
        except Exception as exc:
            evaluation.failed.append({"id": image_id, "error": describe_error(exc)})
            progress.failure(image_path or Path(image_id), exc)
        finally:
            progress.image_done()
    return evaluation


# -------------------------------------------------------------------------------- report
def _finite_or_none(value: float):
    return None if math.isnan(value) else float(value)


def run_parameters(segmenter, request, *, classes, aux_text, overrides: dict) -> dict:
    """The report's `parameters`: the classes and aux text as given, the preset, the
    parameters given over it, and the model."""
    from . import __version__

    return {
        "classes": classes,
        "aux_text": None if aux_text is None else str(aux_text),
        "preset": request.preset,
        "overrides": overrides,
        "model": segmenter.model_identity,
        "device": str(segmenter.device),
        "precision": segmenter.precision,
        "napari_itaclip_version": __version__,
    }


def evaluation_report(
    evaluation: Evaluation, class_names: list[str], *, dataset: Dataset, parameters: dict
) -> dict:
    """Everything `napari-itaclip evaluate` writes to JSON (fractions in [0, 1]; null for no
    IoU)."""
    matrix = evaluation.matrix
    iou = iou_per_class(matrix)
    return {
        "miou": _finite_or_none(mean_iou(matrix)),
        "pixel_accuracy": _finite_or_none(pixel_accuracy(matrix)),
        "classes": [
            {
                "id": class_id,
                "name": name,
                "iou": _finite_or_none(iou[class_id]),
                "ground_truth_pixels": int(matrix[class_id].sum()),
                "predicted_pixels": int(matrix[:, class_id].sum()),
            }
            for class_id, name in enumerate(class_names)
        ],
        "images_evaluated": evaluation.evaluated,
        "failed": evaluation.failed,
        "dataset": dataset.record(),
        "parameters": parameters,
        "confusion_matrix": matrix.tolist(),
    }


def format_table(report: dict) -> str:
    """The per-class table and the summary line, IoU in percent as papers print it."""
    width = max(len("class"), *(len(row["name"]) for row in report["classes"]))
    lines = [f"{'id':>5}  {'class':<{width}}  {'IoU %':>7}  {'GT pixels':>12}"]
    for row in report["classes"]:
        iou = "-" if row["iou"] is None else f"{100 * row['iou']:.2f}"
        lines.append(
            f"{row['id']:>5}  {row['name']:<{width}}  {iou:>7}  {row['ground_truth_pixels']:>12}"
        )
    miou, accuracy = report["miou"], report["pixel_accuracy"]
    counted = sum(row["iou"] is not None for row in report["classes"])
    lines.append(
        f"mIoU {'-' if miou is None else f'{100 * miou:.2f}'} over {counted} classes, "
        f"pixel accuracy {'-' if accuracy is None else f'{100 * accuracy:.2f}'}, "
        f"{report['images_evaluated']} images, {len(report['failed'])} failed"
    )
    return "\n".join(lines)

"""Postprocessing (docs/method.md §7): query softmax, variant max, thresholds, closing."""

from __future__ import annotations

import numpy as np
import torch


def class_probabilities(
    logits: torch.Tensor, query_class: torch.Tensor, n_classes: int, logit_scale: float
) -> torch.Tensor:
    """(C, H, W): softmax(logit_scale * logits) over all queries, then max over each class's."""
    p = (logits.float() * logit_scale).softmax(0)
    if p.shape[0] == n_classes:
        return p
    index = query_class.view(-1, 1, 1).expand_as(p)
    out = p.new_zeros((n_classes, *p.shape[1:]))
    return out.scatter_reduce_(0, index, p, reduce="amax", include_self=False)


def argmax_counts(probabilities: torch.Tensor) -> torch.Tensor:
    """Pixels per class in the argmax of (C, H, W) probabilities, on their device."""
    winners = probabilities.argmax(0).flatten()
    # scatter_add, not bincount: every backend has it, and it needs no host sync for the
    # output size, nor a copy of the whole argmax to the host.
    counts = torch.zeros(probabilities.shape[0], dtype=torch.long, device=winners.device)
    return counts.scatter_add_(0, winners, torch.ones_like(winners))


def surviving_classes(
    counts: torch.Tensor, area_thd: float | None, background: bool
) -> torch.Tensor:
    """Boolean (C,) CPU mask: a candidate class survives if its argmax count is greater than
    area_thd times the summed count of all candidates. Candidates are the non-background
    classes (all classes when there is no background); background always survives."""
    keep = torch.ones(counts.shape, dtype=torch.bool)
    if area_thd is None:
        return keep
    first = 1 if background else 0
    candidates = counts[first:].cpu().double()  # exact for any image size (MPS has no float64)
    keep[first:] = candidates > area_thd * candidates.sum()
    return keep


def labels_from_probabilities(probabilities: torch.Tensor, prob_thd: float) -> torch.Tensor:
    """argmax class, with 0 where the best probability is below prob_thd, in the smallest
    dtype that holds the class ids (uint8 up to 256 classes), so that the copy to the host
    moves 1 byte a pixel rather than 8."""
    best, labels = probabilities.max(0)
    # masked_fill: a boolean-mask write would need a host sync on an accelerator
    labels = labels.masked_fill_(best < prob_thd, 0)
    return labels.to(torch.uint8 if probabilities.shape[0] <= 256 else torch.int32)


def class_id_dtype(n_classes: int):
    """The dtype of the engine's class-id labels: uint8 up to 256 classes, else uint16.

    Label ids (class id + 1 without a background class) follow the parent package's
    `labels.label_id_dtype`, which may need uint16 where class ids fit uint8.
    """
    return np.uint8 if n_classes <= 256 else np.uint16


def __getattr__(name):
    if name == "label_dtype":  # its name until the label ids got a dtype rule of their own
        import warnings

        warnings.warn(
            "engine.postprocess.label_dtype is deprecated; use class_id_dtype",
            DeprecationWarning,
            stacklevel=2,
        )
        return class_id_dtype
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def close_labels(labels: np.ndarray) -> np.ndarray:
    """3x3 rectangular grey-level closing (dilate then erode the ids), OpenCV's border rules."""
    import cv2

    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3))
    return cv2.morphologyEx(labels, cv2.MORPH_CLOSE, kernel)

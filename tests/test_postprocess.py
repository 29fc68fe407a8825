"""Postprocessing (docs/method.md §7) on hand-made tensors."""

import numpy as np
import torch

from napari_itaclip.engine.postprocess import (
    argmax_counts,
    class_probabilities,
    close_labels,
    label_dtype,
    labels_from_probabilities,
    surviving_classes,
)


def test_softmax_over_all_queries_then_max_over_variants():
    logits = torch.tensor([0.1, 0.3, 0.2]).view(3, 1, 1)  # queries: class 0, class 0, class 1
    p = class_probabilities(logits, torch.tensor([0, 0, 1]), 2, logit_scale=10)
    soft = torch.softmax(torch.tensor([1.0, 3.0, 2.0]), 0)
    torch.testing.assert_close(p[:, 0, 0], torch.stack([soft[1], soft[2]]))


def test_one_query_per_class_is_the_plain_softmax():
    logits = torch.randn(3, 4, 5)
    p = class_probabilities(logits, torch.arange(3), 3, logit_scale=40)
    torch.testing.assert_close(p, (40 * logits).softmax(0))


def test_area_threshold_keeps_classes_above_share_of_non_background():
    counts = torch.tensor([1000, 5, 50, 45])
    # non-background total 100; threshold 0.1 -> a class needs more than 10 pixels
    assert surviving_classes(counts, 0.1, True).tolist() == [True, False, True, True]
    assert surviving_classes(counts, None, True).all()
    # without background every class is a candidate: total 1100 -> more than 110 pixels
    assert surviving_classes(counts, 0.1, False).tolist() == [True, False, False, False]


def test_suppressed_class_pixels_go_to_next_best():
    p = torch.zeros(3, 1, 10)
    p[0] = 0.2
    p[1, 0, :9] = 0.7  # class 1 wins 9 pixels
    p[2, 0, 9] = 0.5  # class 2 wins 1 pixel: 1 / 10 is not > 0.1
    keep = surviving_classes(argmax_counts(p), 0.1, True)
    p[~keep] = 0
    labels = labels_from_probabilities(p, prob_thd=0.0)
    assert labels[0].tolist() == [1] * 9 + [0]


def test_probability_threshold_sets_label_zero():
    p = torch.tensor([[[0.05, 0.5]], [[0.09, 0.2]]])
    assert labels_from_probabilities(p, 0.1)[0].tolist() == [0, 0]
    assert labels_from_probabilities(p, 0.0)[0].tolist() == [1, 0]


def test_closing_is_grey_level_dilate_then_erode():
    labels = np.full((7, 7), 3, np.uint8)
    labels[3, 3] = 0  # a one-pixel hole is filled by the surrounding id
    labels[0, :] = 1  # grey-level, not per class: a 1-pixel strip of a lower id is absorbed
    closed = close_labels(labels)
    assert closed[3, 3] == 3 and (closed[0] == 3).all()
    edge = np.zeros((5, 5), np.uint8)
    edge[:, 2:] = 2  # a straight boundary does not move
    np.testing.assert_array_equal(close_labels(edge), edge)
    wide = np.zeros((5, 5), np.uint16)
    wide[2, 2] = 300
    assert close_labels(wide).dtype == np.uint16


def test_label_dtype():
    assert label_dtype(256) == np.uint8 and label_dtype(257) == np.uint16

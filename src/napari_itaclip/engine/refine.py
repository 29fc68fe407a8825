"""The refinement stage: stitched logits -> labels and probabilities at the original size.

Per band of output rows: bilinear upsampling, PAMR (over the band plus its halo, so it is
exact: docs/method.md §6), query softmax and variant max. The area threshold needs counts
over the whole image, so with it a first pass counts and a second applies. Bands are as
tall as `band_memory_mb` allows.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .classes import ClassList
from .pamr import halo, pamr_affinity, pamr_iterate
from .postprocess import (
    argmax_counts,
    class_id_dtype,
    class_probabilities,
    labels_from_probabilities,
    surviving_classes,
)
from .presets import Preset
from .resample import upsample_rows

# Working memory for one band of the refinement stage; bands are as tall as this allows.
DEFAULT_BAND_MEMORY_MB = 1536
# Queries iterated together by PAMR inside a band.
PAMR_QUERY_CHUNK = 8


def band_rows(n_queries: int, width: int, margin: int, factor: int, band_memory_mb: float) -> int:
    """Output rows per band so that one band's working set fits band_memory_mb.

    A band holds the refined logits and probabilities of its own rows for all queries,
    and, over the band plus its halo, the image, the affinities and one chunk of
    PAMR_QUERY_CHUNK queries being iterated. Always a multiple of `factor`, so that
    downsampled probability blocks never straddle two bands.
    """
    per_core_row = 2 * n_queries
    per_halo_row = 25 + 3 * min(n_queries, PAMR_QUERY_CHUNK) if margin else 0
    budget_rows = int(band_memory_mb * 2**20) // (4 * width)
    rows = (budget_rows - per_halo_row * 2 * margin) // (per_core_row + per_halo_row)
    rows = max(rows, 64, margin // 2)
    return max(factor, rows // factor * factor)


def band_probabilities(
    normalised: torch.Tensor,
    logits: torch.Tensor,
    size: tuple[int, int],
    rows: tuple[int, int],
    query_class: torch.Tensor,
    n_classes: int,
    params: Preset,
    checkpoint: Callable[[], None],
) -> torch.Tensor:
    """(C, y1 - y0, W) class probabilities of output rows y0:y1, PAMR-refined if asked."""
    y0, y1 = rows
    if not params.pamr_steps:
        band = upsample_rows(logits, size, y0, y1)
        return class_probabilities(band, query_class, n_classes, params.logit_scale)
    # PAMR over the band plus its halo; queries are independent given the affinities, so
    # they are iterated a chunk at a time and only the band's own rows are kept. A band can
    # take tens of seconds, so cancel is polled before every PAMR step.
    height, width = size
    margin = halo(params.pamr_steps, params.pamr_dilations)
    e0, e1 = max(0, y0 - margin), min(height, y1 + margin)
    affinity = pamr_affinity(upsample_rows(normalised, size, e0, e1), params.pamr_dilations)
    band = torch.empty((logits.shape[0], y1 - y0, width), device=logits.device)
    for q0 in range(0, logits.shape[0], PAMR_QUERY_CHUNK):
        chunk = upsample_rows(logits[q0 : q0 + PAMR_QUERY_CHUNK], size, e0, e1)
        chunk = pamr_iterate(chunk, affinity, params.pamr_dilations, params.pamr_steps, checkpoint)
        band[q0 : q0 + PAMR_QUERY_CHUNK] = chunk[:, y0 - e0 : y1 - e0]
    return class_probabilities(band, query_class, n_classes, params.logit_scale)


def refine(
    normalised: torch.Tensor,
    logits: torch.Tensor,
    size: tuple[int, int],
    class_list: ClassList,
    params: Preset,
    factor: int,
    *,
    band_memory_mb: float = DEFAULT_BAND_MEMORY_MB,
    report: Callable[[int, int, str], None],
    checkpoint: Callable[[], None],
    vouched: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels (H, W) and class probabilities (C, H/f, W/f) at the original size `size`.

    normalised: the (3, h, w) resized image; logits: its (Q, h, w) stitched logits (both on
    the device that computes). report(done, total, "refine") after every band; checkpoint()
    before every band and PAMR step (it cancels by raising). vouched: (C,) classes that
    survive the area threshold whatever their area (those the user gave examples of).
    """
    height, width = size
    n_classes = len(class_list)
    query_class = torch.tensor(class_list.query_class, device=logits.device)
    margin = halo(params.pamr_steps, params.pamr_dilations)
    rows = band_rows(logits.shape[0], width, margin, factor, band_memory_mb)
    bands = [(y, min(y + rows, height)) for y in range(0, height, rows)]
    probabilities = np.empty(
        (n_classes, math.ceil(height / factor), math.ceil(width / factor)), np.float32
    )
    labels = np.empty((height, width), class_id_dtype(n_classes))

    def probabilities_of(band: tuple[int, int]) -> torch.Tensor:
        return band_probabilities(
            normalised, logits, size, band, query_class, n_classes, params, checkpoint
        )

    two_pass = params.area_thd is not None
    stored = factor == 1  # full-size probabilities are kept, so pass 2 needs no recompute
    total = len(bands) * (2 if two_pass else 1)
    done = 0
    keep = None
    if two_pass:
        counts = torch.zeros(n_classes, dtype=torch.long)
        for y0, y1 in bands:
            checkpoint()
            p = probabilities_of((y0, y1))
            counts += argmax_counts(p)
            if stored:
                probabilities[:, y0:y1] = p.cpu().numpy()
            done += 1
            report(done, total, "refine")
        keep_np = surviving_classes(counts, params.area_thd, class_list.background).numpy()
        if vouched is not None:
            keep_np |= vouched
        keep = torch.from_numpy(keep_np).to(logits.device)
    for y0, y1 in bands:
        checkpoint()
        if two_pass and stored:
            probabilities[~keep_np, y0:y1] = 0
            p = torch.from_numpy(probabilities[:, y0:y1]).to(logits.device)
        else:
            p = probabilities_of((y0, y1))
            if keep is not None:
                p[~keep] = 0
            if stored:
                probabilities[:, y0:y1] = p.cpu().numpy()
        if not stored:
            pooled = F.avg_pool2d(p[None], factor, ceil_mode=True)[0]
            probabilities[:, y0 // factor : y0 // factor + pooled.shape[1]] = pooled.cpu().numpy()
        labels[y0:y1] = labels_from_probabilities(p, params.prob_thd).cpu().numpy()
        done += 1
        report(done, total, "refine")
    return labels, probabilities

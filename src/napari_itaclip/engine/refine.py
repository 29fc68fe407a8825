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
from .device_sync import completion_marker
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
# Queries iterated together by PAMR on the CPU (faster there than more at once: one chunk's
# maps stay in the caches; docs/performance.md), and the least on an accelerator.
PAMR_QUERY_CHUNK = 8
# Band copies to the host in flight on CUDA before the host waits for the oldest.
MAX_PENDING_COPIES = 2


def band_rows(
    n_queries: int,
    width: int,
    margin: int,
    factor: int,
    band_memory_mb: float,
    query_chunk: int = PAMR_QUERY_CHUNK,
) -> int:
    """Output rows per band so that one band's working set fits band_memory_mb.

    A band holds the refined logits and probabilities of its own rows for all queries,
    and, over the band plus its halo, the image, the affinities and one chunk of
    `query_chunk` queries being iterated. Always a multiple of `factor`, so that
    downsampled probability blocks never straddle two bands.
    """
    per_core_row = 2 * n_queries
    per_halo_row = 25 + 3 * min(n_queries, query_chunk) if margin else 0
    budget_rows = int(band_memory_mb * 2**20) // (4 * width)
    rows = (budget_rows - per_halo_row * 2 * margin) // (per_core_row + per_halo_row)
    rows = max(rows, 64, margin // 2)
    return max(factor, rows // factor * factor)


def pamr_query_chunk(
    n_queries: int, size: tuple[int, int], margin: int, factor: int, band_memory_mb: float, device
) -> int:
    """Queries PAMR iterates together: PAMR_QUERY_CHUNK on the CPU. On an accelerator, where
    a step costs the same 17 kernel launches for any number of queries, the largest of all,
    half, a quarter, ... of them whose bands are no more numerous than PAMR_QUERY_CHUNK's
    (more bands would recompute more halo rows)."""
    least = min(n_queries, PAMR_QUERY_CHUNK)
    if torch.device(device).type == "cpu" or not margin:
        return least
    height, width = size

    def n_bands(chunk: int) -> int:
        return math.ceil(
            height / band_rows(n_queries, width, margin, factor, band_memory_mb, chunk)
        )

    chunk = n_queries
    while chunk > least and n_bands(chunk) > n_bands(least):
        chunk = math.ceil(chunk / 2)
    return max(chunk, least)


def band_probabilities(
    normalised: torch.Tensor,
    logits: torch.Tensor,
    size: tuple[int, int],
    rows: tuple[int, int],
    query_class: torch.Tensor,
    n_classes: int,
    params: Preset,
    checkpoint: Callable[[], None],
    query_chunk: int = PAMR_QUERY_CHUNK,
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
    for q0 in range(0, logits.shape[0], query_chunk):
        chunk = upsample_rows(logits[q0 : q0 + query_chunk], size, e0, e1)
        chunk = pamr_iterate(chunk, affinity, params.pamr_dilations, params.pamr_steps, checkpoint)
        band[q0 : q0 + query_chunk] = chunk[:, y0 - e0 : y1 - e0]
    return class_probabilities(band, query_class, n_classes, params.logit_scale)


class HostCopies:
    """Band results copied into numpy outputs.

    On CUDA through pinned staging buffers with non_blocking copies: no sync per band, and
    the host fills the outputs while the device computes the next band; `finish` waits for
    the last. Elsewhere a plain copy (none at all on the CPU).
    """

    def __init__(self, staged: bool):
        self.staged = staged
        self.pending: list[tuple] = []

    def put(self, target: np.ndarray, tensor: torch.Tensor) -> None:
        if not self.staged:
            target[...] = tensor.cpu().numpy()
            return
        staging = staging_buffer(tensor)
        staging.copy_(tensor, non_blocking=True)
        self.pending.append((completion_marker(tensor.device), staging, target))
        while self.pending and (
            len(self.pending) > MAX_PENDING_COPIES or _finished(self.pending[0][0])
        ):
            self._land(*self.pending.pop(0))

    def finish(self) -> None:
        while self.pending:
            self._land(*self.pending.pop(0))

    @staticmethod
    def _land(marker, staging: torch.Tensor, target: np.ndarray) -> None:
        if marker is not None:  # None: a host tensor, copied already
            marker.synchronize()
        target[...] = staging.numpy()


def _finished(marker) -> bool:
    return marker is None or marker.query()


def staging_buffer(tensor: torch.Tensor) -> torch.Tensor:
    """A pinned host tensor shaped like `tensor` (torch caches pinned blocks)."""
    return torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)


def keeps_on_device(device: torch.device, nbytes: int, band_memory_mb: float) -> bool:
    """Whether the first pass of the area threshold keeps its full-size probabilities on the
    device for the second: on an accelerator, when all of them fit band_memory_mb (on the
    CPU the host copy is the same memory)."""
    return device.type != "cpu" and nbytes <= band_memory_mb * 2**20


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

    With the area threshold, full-size probabilities (factor 1) are kept from the first pass
    (`keeps_on_device`), so that the second pass recomputes and uploads nothing.
    """
    height, width = size
    n_classes = len(class_list)
    device = logits.device
    query_class = torch.tensor(class_list.query_class, device=device)
    margin = halo(params.pamr_steps, params.pamr_dilations)
    chunk = pamr_query_chunk(logits.shape[0], size, margin, factor, band_memory_mb, device)
    rows = band_rows(logits.shape[0], width, margin, factor, band_memory_mb, chunk)
    bands = [(y, min(y + rows, height)) for y in range(0, height, rows)]
    probabilities = np.empty(
        (n_classes, math.ceil(height / factor), math.ceil(width / factor)), np.float32
    )
    labels = np.empty((height, width), class_id_dtype(n_classes))
    copies = HostCopies(staged=device.type == "cuda")

    def probabilities_of(band: tuple[int, int]) -> torch.Tensor:
        return band_probabilities(
            normalised, logits, size, band, query_class, n_classes, params, checkpoint, chunk
        )

    two_pass = params.area_thd is not None
    stored = factor == 1  # full-size probabilities are kept, so pass 2 needs no recompute
    on_device = keeps_on_device(device, probabilities.nbytes, band_memory_mb)
    kept: list[torch.Tensor] = []  # pass 1's band probabilities, when kept on the device
    total = len(bands) * (2 if two_pass else 1)
    done = 0
    keep = None
    if two_pass:
        counts = torch.zeros(n_classes, dtype=torch.long, device=device)
        for y0, y1 in bands:
            checkpoint()
            p = probabilities_of((y0, y1))
            counts += argmax_counts(p)
            if stored:
                copies.put(probabilities[:, y0:y1], p)
                kept += [p] if on_device else []
            done += 1
            report(done, total, "refine")
        keep_np = surviving_classes(counts, params.area_thd, class_list.background).numpy()
        if vouched is not None:
            keep_np |= vouched
        # a multiplier, not a boolean-mask write (which needs a host sync on a device)
        keep = torch.from_numpy(keep_np).to(device, torch.float32).view(-1, 1, 1)
        copies.finish()  # pass 2 zeroes the dropped classes of the host copy
    for band, (y0, y1) in enumerate(bands):
        checkpoint()
        if two_pass and stored:
            probabilities[~keep_np, y0:y1] = 0
            p = kept[band] * keep if kept else torch.from_numpy(probabilities[:, y0:y1])
        else:
            p = probabilities_of((y0, y1))
            if keep is not None:
                p.mul_(keep)
            if stored:
                copies.put(probabilities[:, y0:y1], p)
        if not stored:
            pooled = F.avg_pool2d(p[None], factor, ceil_mode=True)[0]
            copies.put(probabilities[:, y0 // factor : y0 // factor + pooled.shape[1]], pooled)
        copies.put(labels[y0:y1], labels_from_probabilities(p, params.prob_thd))
        done += 1
        report(done, total, "refine")
    copies.finish()
    return labels, probabilities

"""PAMR refinement (docs/method.md §6), exact and memory-bounded.

Affinities come from the image once; then `steps` times every pixel's logits become the
affinity-weighted sum of its 16 neighbours' logits (8 at each dilation, replicate padding).
PAMR is local: after `steps` iterations a pixel depends only on rows within
steps * max(dilations), so a band of rows computed with that halo on both sides is exact.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

STD_EPS = 1e-8
STD_FACTOR = 0.1


def neighbour_offsets(dilations) -> list[tuple[int, int]]:
    """The 8 offsets around the centre at each dilation, in the reference's kernel order."""
    return [
        (dy * d, dx * d)
        for d in dilations
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
        if (dy, dx) != (0, 0)
    ]


def halo(steps: int, dilations) -> int:
    """Rows each side of a band that make band-wise PAMR exact."""
    return steps * max(dilations) if steps else 0


def _shifted(padded: torch.Tensor, pad: int, dy: int, dx: int, h: int, w: int) -> torch.Tensor:
    return padded[..., pad + dy : pad + dy + h, pad + dx : pad + dx + w]


def pamr_affinity(image: torch.Tensor, dilations) -> torch.Tensor:
    """(16, H, W) neighbour weights from a (3, H, W) image.

    a = -|x - x_n| / (1e-8 + 0.1 * std), std over the 3x3 neighbourhood including the centre at
    both dilations (18 samples, unbiased), per channel; averaged over channels; softmax over
    the neighbours.
    """
    h, w = image.shape[-2:]
    pad = max(dilations)
    padded = F.pad(image[None], (pad, pad, pad, pad), mode="replicate")[0]
    samples = [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    mean = sum(_shifted(padded, pad, dy, dx, h, w) for dy, dx in samples) / len(samples)
    var = sum((_shifted(padded, pad, dy, dx, h, w) - mean) ** 2 for dy, dx in samples)
    std = (var / (len(samples) - 1)).sqrt()
    denom = STD_EPS + STD_FACTOR * std
    offsets = neighbour_offsets(dilations)
    affinity = torch.stack(
        [
            (-(image - _shifted(padded, pad, dy, dx, h, w)).abs() / denom).mean(0)
            for dy, dx in offsets
        ]
    )
    return affinity.softmax(0)


def pamr_iterate(
    logits: torch.Tensor,
    affinity: torch.Tensor,
    dilations,
    steps: int,
    checkpoint: Callable[[], None] | None = None,
) -> torch.Tensor:
    """`steps` PAMR iterations on (Q, H, W) logits (the centre itself is not a neighbour).

    checkpoint: called before every step, so that a caller can cancel (by raising) within
    one step.
    """
    h, w = logits.shape[-2:]
    pad = max(dilations)
    offsets = neighbour_offsets(dilations)
    for _ in range(steps):
        if checkpoint is not None:
            checkpoint()
        padded = F.pad(logits[None], (pad, pad, pad, pad), mode="replicate")[0]
        # 17 kernels a step (pad, product, 15 fused adds) whatever the number of queries:
        # on an accelerator the caller passes many queries at once (refine.pamr_query_chunk).
        (dy, dx), *rest = offsets
        out = _shifted(padded, pad, dy, dx, h, w) * affinity[0]
        for weight, (dy, dx) in zip(affinity[1:], rest, strict=True):
            out.addcmul_(_shifted(padded, pad, dy, dx, h, w), weight)
        logits = out
    return logits


def pamr(image: torch.Tensor, logits: torch.Tensor, steps: int, dilations) -> torch.Tensor:
    """Whole-image PAMR: (3, H, W) image, (Q, H, W) logits -> refined logits."""
    if steps == 0:
        return logits
    return pamr_iterate(logits, pamr_affinity(image, dilations), dilations, steps)

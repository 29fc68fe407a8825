"""Bilinear upsampling (align_corners=False) computed one band of output rows at a time.

The result equals `F.interpolate(x, size, mode="bilinear", align_corners=False)` restricted to
the band, so a huge output never has to exist whole.
"""

from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=64)
def axis_index(out_len: int, in_len: int, device: torch.device):
    """Lower source index, upper source index and upper weight of every output position of
    one axis, on `device`: built once per (sizes, device), so that a band, a re-run or the
    next image of the same size costs no host-to-device copy."""
    scale = in_len / out_len
    # float64 on the CPU (MPS has no float64), then moved to the data's device; normal
    # tensors even when first asked for inside inference mode, since they are kept.
    with torch.inference_mode(False):
        dst = torch.arange(out_len, dtype=torch.float64)
        src = ((dst + 0.5) * scale - 0.5).clamp_min(0)
        lo = src.floor().long().clamp_max(in_len - 1)
        hi = (lo + 1).clamp_max(in_len - 1)
        weight = (src - lo).float()
        return lo.to(device), hi.to(device), weight.to(device)


def source_index(out_len: int, in_len: int, start: int, stop: int, device):
    """Lower source index, upper source index and upper weight for output rows start..stop."""
    lo, hi, weight = axis_index(out_len, in_len, torch.device(device))
    return lo[start:stop], hi[start:stop], weight[start:stop]


def upsample_rows(x: torch.Tensor, size: tuple[int, int], start: int, stop: int) -> torch.Tensor:
    """Rows start..stop of the bilinear upsampling of (C, h, w) `x` to `size` = (H, W)."""
    out_h, out_w = size
    in_h, in_w = x.shape[-2:]
    lo, hi, wy = source_index(out_h, in_h, start, stop, x.device)
    rows = torch.lerp(x[:, lo], x[:, hi], wy.to(x.dtype).view(1, -1, 1))
    lo, hi, wx = source_index(out_w, in_w, 0, out_w, x.device)
    return torch.lerp(rows[:, :, lo], rows[:, :, hi], wx.to(x.dtype).view(1, 1, -1))

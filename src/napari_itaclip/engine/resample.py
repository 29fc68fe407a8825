"""Bilinear upsampling (align_corners=False) computed one band of output rows at a time.

The result equals `F.interpolate(x, size, mode="bilinear", align_corners=False)` restricted to
the band, so a huge output never has to exist whole.
"""

from __future__ import annotations

import torch


def source_index(out_len: int, in_len: int, start: int, stop: int, device):
    """Lower source index, upper source index and upper weight for output rows start..stop."""
    scale = in_len / out_len
    # float64 on the CPU (MPS has no float64), then moved to the data's device.
    dst = torch.arange(start, stop, dtype=torch.float64)
    src = ((dst + 0.5) * scale - 0.5).clamp_min(0)
    lo = src.floor().long().clamp_max(in_len - 1)
    hi = (lo + 1).clamp_max(in_len - 1)
    weight = (src - lo).float()
    return lo.to(device), hi.to(device), weight.to(device)


def upsample_rows(x: torch.Tensor, size: tuple[int, int], start: int, stop: int) -> torch.Tensor:
    """Rows start..stop of the bilinear upsampling of (C, h, w) `x` to `size` = (H, W)."""
    out_h, out_w = size
    in_h, in_w = x.shape[-2:]
    lo, hi, wy = source_index(out_h, in_h, start, stop, x.device)
    rows = torch.lerp(x[:, lo], x[:, hi], wy.to(x.dtype).view(1, -1, 1))
    lo, hi, wx = source_index(out_w, in_w, 0, out_w, x.device)
    return torch.lerp(rows[:, :, lo], rows[:, :, hi], wx.to(x.dtype).view(1, 1, -1))

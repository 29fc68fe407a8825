"""Sliding windows and image-engineering views (docs/method.md §4 and §5)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

BLUR_KERNEL = 11
BLUR_SIGMA = 5.0
# Views per window with image engineering: original, grey, blur, vertical flip, horizontal flip.
N_VIEWS = 5


@dataclass(frozen=True)
class Window:
    y0: int
    y1: int
    x0: int
    x1: int


def window_starts(length: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """(start, end) of each window along one axis, as the reference's grid computes them."""
    n = max(length - crop + stride - 1, 0) // stride + 1
    spans = []
    for i in range(n):
        end = min(i * stride + crop, length)
        spans.append((max(end - crop, 0), end))
    return spans


def sliding_windows(height: int, width: int, crop: int, stride: int) -> list[Window]:
    """Windows in row-major order; a side shorter than `crop` gives a smaller window."""
    return [
        Window(y0, y1, x0, x1)
        for y0, y1 in window_starts(height, crop, stride)
        for x0, x1 in window_starts(width, crop, stride)
    ]


def grey_view(crops: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of the normalised crops, copied to 3 channels."""
    r, g, b = crops.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1).expand(-1, 3, -1, -1)


def gaussian_kernel(size: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    x = torch.linspace(-(size - 1) / 2, (size - 1) / 2, size)
    pdf = torch.exp(-0.5 * (x / sigma) ** 2)
    return pdf / pdf.sum()


@lru_cache(maxsize=16)
def blur_weights(channels: int, device: torch.device, dtype: torch.dtype):
    """The (horizontal, vertical) depthwise convolution weights of the blur, built once per
    device and dtype instead of copied to the device for every chunk."""
    with torch.inference_mode(False):  # kept across runs: normal tensors
        kernel = gaussian_kernel().to(device, dtype)
        horizontal = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
        return horizontal, horizontal.view(channels, 1, -1, 1)


def blur_view(crops: torch.Tensor) -> torch.Tensor:
    """Gaussian blur (kernel 11, sigma 5), separable, reflect padding at each crop's border."""
    channels = crops.shape[1]
    horizontal, vertical = blur_weights(channels, crops.device, crops.dtype)
    pad = BLUR_KERNEL // 2
    x = F.pad(crops, (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, horizontal, groups=channels)
    return F.conv2d(x, vertical, groups=channels)


def make_views(crops: torch.Tensor, views) -> torch.Tensor:
    """(n * len(views), 3, h, w) encoder inputs, view-major, for view indices in
    (0 original, 1 grey, 2 blur, 3 vertical flip, 4 horizontal flip)."""
    build = (
        lambda c: c,
        grey_view,
        blur_view,
        lambda c: c.flip(-2),
        lambda c: c.flip(-1),
    )
    return torch.cat([build[view](crops) for view in views], dim=0)


def crop_views(crops: torch.Tensor, image_engineering: bool) -> torch.Tensor:
    """(n * V, 3, h, w) encoder inputs, view-major: [orig..., grey..., blur..., vflip..., hflip...]."""
    if not image_engineering:
        return crops
    return make_views(crops, range(N_VIEWS))


def view_groups(view_features: torch.Tensor) -> torch.Tensor:
    """(G, n, N, D) view groups from the (V, n, N, D) L2-normalised patch features of all
    views (V = 5 -> G = 3: mean of original, grey and blur, not re-normalised; vertical flip;
    horizontal flip. V = 1 -> G = 1). What `groups_to_grid_logits` needs for any c_img."""
    if view_features.shape[0] == 1:
        return view_features
    v = view_features
    return torch.stack([(v[0] + v[1] + v[2]) / 3, v[3], v[4]])


def groups_to_grid_logits(
    groups: torch.Tensor, text: torch.Tensor, grid: tuple[int, int], c_img: float
) -> torch.Tensor:
    """Crop logits (n, Q, gh, gw) on the patch grid from (G, n, N, D) view groups.

    Each flipped view gives its own logits, flipped back; crop = c_img * views +
    (1 - c_img) * mean(flips). Bilinear upsampling (align_corners=False) is linear and
    commutes with flips, so combining on the grid and upsampling once afterwards equals
    upsampling every view first.
    """
    groups = groups.float()
    text = text.float()
    logits = _grid(groups[0] @ text.T, grid)
    if groups.shape[0] == 1:
        return logits
    vflip = _grid(groups[1] @ text.T, grid).flip(-2)
    hflip = _grid(groups[2] @ text.T, grid).flip(-1)
    return c_img * logits + (1 - c_img) * ((vflip + hflip) / 2)


def patch_features(tokens: torch.Tensor, n_views: int) -> torch.Tensor:
    """(V, n, N, D) L2-normalised patch features (CLS dropped) of view-major encoder tokens."""
    return F.normalize(tokens[:, 1:].float(), dim=-1).unflatten(0, (n_views, -1))


def views_to_grid_logits(
    tokens: torch.Tensor,
    text: torch.Tensor,
    grid: tuple[int, int],
    image_engineering: bool,
    c_img: float,
) -> torch.Tensor:
    """Crop logits (n, Q, gh, gw) on the patch grid from the encoder tokens of all views.

    Features are L2-normalised per token; the original, grey and blur features are averaged
    (not re-normalised) before the dot product with the text (see `groups_to_grid_logits`).
    """
    views = patch_features(tokens, N_VIEWS if image_engineering else 1)
    return groups_to_grid_logits(view_groups(views), text, grid, c_img)


def _grid(logits: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    return logits.transpose(1, 2).reshape(logits.shape[0], logits.shape[2], *grid)


def stitch_window(
    canvas: torch.Tensor, count: torch.Tensor, grid_logits: torch.Tensor, window: Window
) -> None:
    """Upsample one crop's (Q, gh, gw) logits to the window and add them to the canvas."""
    size = (window.y1 - window.y0, window.x1 - window.x0)
    up = F.interpolate(grid_logits[None], size=size, mode="bilinear", align_corners=False)[0]
    canvas[:, window.y0 : window.y1, window.x0 : window.x1] += up
    count[window.y0 : window.y1, window.x0 : window.x1] += 1

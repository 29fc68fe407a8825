"""Kept image features (docs/method.md §10): what the encoder made of an image, for reuse.

A run is encoding (windows x views through the modified encoder: nearly all of its time) and
everything after it. The encoder's output is kept per window as L2-normalised patch tokens in
view groups (`windows.view_groups`), in the compute precision, so any class list, auxiliary
text, c_img, logit scale, threshold or PAMR setting, and any examples, apply to it later
without an encoder pass. A segmenter keeps the features of recent images in a `FeatureCache`
keyed by `feature_key`: the resized pixels and every setting the features depend on.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .presets import Preset
from .windows import (
    N_VIEWS,
    Window,
    groups_to_grid_logits,
    sliding_windows,
    stitch_window,
    view_groups,
)

DEFAULT_IMAGE_CACHE_MB = 512
# The preview's window step: that of the `fast` preset (rounded down to a multiple of the
# run's stride, so that the preview's windows are windows of the full grid).
PREVIEW_STRIDE = 112
STORAGE_DTYPES = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "fp16-cast": torch.float16,
    "bf16": torch.bfloat16,
}

# encode(windows, views, sink, stage, done_before, total): windows x views through the
# encoder, sink(start, stop, view_features) per chunk (see window_encoding.encode_windows).
Encode = Callable[..., None]


@dataclass
class ImageFeatures:
    """The encoded windows of one resized image.

    groups: (G, n_windows, gh * gw, D) L2-normalised patch tokens, G = 3 view groups with
    image engineering (mean of original, grey and blur; vertical flip; horizontal flip) and
    G = 1 without; windows: their positions in the resized image; grid: (gh, gw).
    """

    windows: tuple[Window, ...]
    grid: tuple[int, int]
    groups: torch.Tensor

    @property
    def nbytes(self) -> int:
        return self.groups.numel() * self.groups.element_size()

    def to(self, device) -> ImageFeatures:
        return ImageFeatures(self.windows, self.grid, self.groups.to(device))

    def fused(self, c_img: float, start: int, stop: int) -> torch.Tensor:
        """(k, gh * gw, D) L2-normalised token features of windows start:stop: the views
        combined with c_img exactly as the logits combine them (flipped views flipped back),
        so f . t is proportional to a token's text logit."""
        groups = self.groups[:, start:stop].float()
        if groups.shape[0] == 1:
            return F.normalize(groups[0], dim=-1)
        k, n, d = groups.shape[1:]
        gh, gw = self.grid
        vflip = groups[1].view(k, gh, gw, d).flip(1).reshape(k, n, d)
        hflip = groups[2].view(k, gh, gw, d).flip(2).reshape(k, n, d)
        return F.normalize(c_img * groups[0] + (1 - c_img) * ((vflip + hflip) / 2), dim=-1)


def feature_key(resized: np.ndarray, model: str, params: Preset, precision: str, device) -> str:
    """What kept features depend on: the resized uint8 pixels fed to the encoder, the model
    and every encoder setting (short_side and max_long_side also through the pixels)."""
    digest = hashlib.blake2b(digest_size=16)
    settings = (
        resized.shape,
        model,
        params.short_side,
        params.max_long_side,
        params.crop,
        params.stride,
        params.image_engineering,
        precision,
        str(device),
    )
    digest.update(repr(settings).encode())
    digest.update(np.ascontiguousarray(resized).data)
    return digest.hexdigest()


class FeatureCache:
    """Least-recently-used `ImageFeatures`, at most `max_mb` MiB in all (0: keep nothing).

    Features larger than the bound are used for their run and not kept. Thread-safe.
    """

    def __init__(self, max_mb: float = DEFAULT_IMAGE_CACHE_MB):
        if isinstance(max_mb, bool) or not isinstance(max_mb, int | float) or not max_mb >= 0:
            raise ValueError(f"image_cache_mb must be a number >= 0, got {max_mb!r}")
        self.max_bytes = int(max_mb * 2**20)
        self._entries: OrderedDict[str, ImageFeatures] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> ImageFeatures | None:
        with self._lock:
            features = self._entries.get(key)
            if features is not None:
                self._entries.move_to_end(key)
            return features

    def put(self, key: str, features: ImageFeatures) -> None:
        if features.nbytes > self.max_bytes:
            return
        with self._lock:
            self._entries[key] = features
            self._entries.move_to_end(key)
            while self.nbytes > self.max_bytes:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    @property
    def nbytes(self) -> int:
        return sum(features.nbytes for features in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)


def preview_windows(windows: list[Window], height: int, width: int, params: Preset) -> list[int]:
    """Indices into `windows` (the run's grid) of the preview's windows: the grid whose step
    is the largest multiple of the stride up to PREVIEW_STRIDE and the crop (so its windows
    still cover the image). Every such window is a window of the full grid: its starts
    i * k * stride are starts of the full grid, and the last window of each axis is snapped
    to the border in both grids."""
    stride = params.stride * max(1, min(PREVIEW_STRIDE, params.crop) // params.stride)
    index = {window: i for i, window in enumerate(windows)}
    return [index[w] for w in sliding_windows(height, width, params.crop, stride)]


def encode_image(
    encode: Encode,
    normalised: torch.Tensor,
    params: Preset,
    dtype: torch.dtype,
    patch: tuple[int, int],
    preview: Callable[[ImageFeatures], None] | None = None,
) -> ImageFeatures:
    """Encode the (3, h, w) resized image's windows into `ImageFeatures`.

    preview: when given, the preview's windows (`preview_windows`) go through the encoder
    first, original view only, and preview(their features) is called before the remaining
    views and windows are encoded; no encoder image is encoded twice. Skipped when the
    preview would be the whole run (the `fast` grid without image engineering).
    """
    _, h, w = normalised.shape
    windows = sliding_windows(h, w, params.crop, params.stride)
    views = tuple(range(N_VIEWS)) if params.image_engineering else (0,)
    n = len(windows)
    grid = tuple(s // p for s, p in zip(_size(windows[0]), patch, strict=True))
    kept: dict[str, torch.Tensor] = {}

    def store(indices: list[int]):
        def sink(start: int, stop: int, view_features: torch.Tensor) -> None:
            groups = view_groups(view_features).to(dtype)
            if "groups" not in kept:
                kept["groups"] = groups.new_empty((groups.shape[0], n, *groups.shape[2:]))
            kept["groups"][:, indices[start:stop]] = groups

        return sink

    first = preview_windows(windows, h, w, params) if preview is not None else []
    if len(first) == n and not params.image_engineering:
        first = []  # the preview would be the run itself
    done = 0
    if first:
        originals = []
        encode(
            [windows[i] for i in first],
            (0,),
            lambda start, stop, view_features: originals.append(view_features[0]),
            "preview",
            0,
            len(first),
        )
        original = torch.cat(originals)
        preview(ImageFeatures(tuple(windows[i] for i in first), grid, original[None].to(dtype)))
        if params.image_engineering:
            rest_of = store(first)

            def with_original(start, stop, view_features):
                rest_of(start, stop, torch.cat([original[None, start:stop], view_features]))

            encode([windows[i] for i in first], views[1:], with_original, "encoder", 0, n)
        else:
            store(first)(0, len(first), original[None])
        done = len(first)
    taken = set(first)
    rest = [i for i in range(n) if i not in taken]
    if rest:
        encode([windows[i] for i in rest], views, store(rest), "encoder", done, n)
    return ImageFeatures(tuple(windows), grid, kept["groups"])


def _size(window: Window) -> tuple[int, int]:
    # every window of a grid has this size (crop, or the side when it is shorter)
    return window.y1 - window.y0, window.x1 - window.x0


Term = Callable[[int, int], torch.Tensor]


def stitched_logits(
    features: ImageFeatures,
    text: torch.Tensor,
    c_img: float,
    size: tuple[int, int],
    windows_per_chunk: int,
    term: Term | None = None,
) -> torch.Tensor:
    """(Q, h, w) stitched, count-averaged window logits at the resized size `size`.

    term(start, stop): an optional (k, Q, gh, gw) addition to the grid logits of windows
    start:stop (the examples, docs/method.md §10.3). Windows go `windows_per_chunk` at a
    time, as the encoder's chunks did, so the arithmetic is the same as in one pass.
    """
    device = text.device
    canvas = torch.zeros((text.shape[0], *size), device=device)
    count = torch.zeros(size, device=device)
    for start in range(0, len(features.windows), windows_per_chunk):
        stop = min(start + windows_per_chunk, len(features.windows))
        groups = features.groups[:, start:stop].to(device)
        grid_logits = groups_to_grid_logits(groups, text, features.grid, c_img)
        if term is not None:
            grid_logits += term(start, stop)
        for window, crop_logits in zip(features.windows[start:stop], grid_logits, strict=True):
            stitch_window(canvas, count, crop_logits, window)
    return canvas / count

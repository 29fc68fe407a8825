"""Input stage (docs/method.md §1): any numpy image to uint8 RGB, resize, normalise."""

from __future__ import annotations

import bisect
import math

import numpy as np

# CLIP's mean and std on the 0-255 scale, RGB order.
CLIP_MEAN_255 = (122.771, 116.746, 104.094)
CLIP_STD_255 = (68.501, 66.632, 70.323)

# Non-uint8 images outside the 8-bit range are mapped to 0-255 by these percentiles of their
# values, so a few hot pixels in a 16-bit microscopy image do not squash everything to black.
ROBUST_PERCENTILES = (0.5, 99.5)
# The percentiles come from at most about this many pixels, sampled on a regular grid.
PERCENTILE_SAMPLE_PIXELS = 2**18
# Values mapped at a time: the floating-point working copy never exceeds this many values.
RESCALE_CHUNK_VALUES = 2**20
# Class probabilities larger than this are returned downsampled by default (float32 maps).
PROBABILITY_BUDGET_BYTES = 512 * 2**20


def to_rgb_uint8(image) -> np.ndarray:
    """Return an (H, W, 3) uint8 RGB copy or view of `image`.

    Accepts (H, W) grey, (H, W, 1), (H, W, 3) RGB and (H, W, 4) RGBA (alpha ignored). uint8 is
    used as is; bool becomes 0/255. Other dtypes, one mapping for all channels (colours keep
    their balance):

    - integers whose values all lie in 0-255 (e.g. 8-bit data stored as uint16) are cast as
      they are;
    - floats whose values all lie in [0, 1] become x * 255, rounded to nearest (np.rint, ties
      to even: 0.5 -> 127.5 -> 128);
    - anything else is contrast-stretched: the ROBUST_PERCENTILES of its values (of a regular
      sample of about PERCENTILE_SAMPLE_PIXELS pixels for large images) map to 0 and 255; a
      constant image becomes 128.

    Memory: no whole-image float copy; values are mapped RESCALE_CHUNK_VALUES at a time.
    """
    if not isinstance(image, np.ndarray):
        if hasattr(image, "__array__"):
            image = np.asarray(image)
        else:
            raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim not in (2, 3):
        raise ValueError(
            f"image must be 2D (H, W) or 3D (H, W, C); got {image.ndim} dimensions {image.shape}"
        )
    if image.ndim == 3 and image.shape[2] not in (1, 3, 4):
        raise ValueError(
            f"image must have 1, 3 (RGB) or 4 (RGBA) channels in its last axis; got shape "
            f"{image.shape}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty (shape {image.shape})")
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    elif not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise TypeError(f"image dtype {image.dtype} is not numeric")
    if image.ndim == 3:
        image = image[..., :3] if image.shape[2] == 4 else image
    if image.dtype != np.uint8:
        image = _rescale_to_uint8(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    elif image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image)


def _rescale_to_uint8(image: np.ndarray) -> np.ndarray:
    """The dtype rule of `to_rgb_uint8`, for numeric dtypes other than uint8 and bool."""
    lo, hi = image.min(), image.max()  # a NaN propagates into both
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("image contains NaN or infinite values")
    if np.issubdtype(image.dtype, np.integer):
        if lo >= 0 and hi <= 255:
            return image.astype(np.uint8)
    elif lo >= 0 and hi <= 1:
        return _map_linear(image, 0, 255.0)
    pixels = image.shape[0] * image.shape[1]
    step = max(1, math.ceil(math.sqrt(pixels / PERCENTILE_SAMPLE_PIXELS)))
    p_lo, p_hi = np.percentile(image[::step, ::step], ROBUST_PERCENTILES)
    if p_hi > p_lo:
        lo, hi = p_lo, p_hi
    if hi <= lo:  # a constant image: keep it mid-grey rather than dividing by zero
        return np.full(image.shape, 128, np.uint8)
    return _map_linear(image, lo, 255.0 / (float(hi) - float(lo)))


def _map_linear(image: np.ndarray, offset, scale: float) -> np.ndarray:
    """clip(rint((image - offset) * scale), 0, 255) as uint8, a chunk of rows at a time."""
    # float32 unless the values need more (int32, int64, float64)
    work = np.result_type(image.dtype, np.float32)
    out = np.empty(image.shape, np.uint8)
    rows = max(1, RESCALE_CHUNK_VALUES // (image.size // image.shape[0]))
    for y in range(0, image.shape[0], rows):
        chunk = image[y : y + rows].astype(work)
        chunk -= offset
        chunk *= scale
        np.rint(chunk, out=chunk)
        np.clip(chunk, 0, 255, out=chunk)
        out[y : y + rows] = chunk
    return out


def resized_shape(height: int, width: int, short_side: int, max_long_side: int) -> tuple[int, int]:
    """(h, w) after the reference's keep-ratio resize: short side -> S, long side <= max."""
    factor = min(max_long_side / max(height, width), short_side / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def minimum_side(params, patch: int) -> int:
    """Pixels each side of the resized image needs: one crop must hold a whole patch, and the
    blur view pads each crop by reflection, which needs more pixels than the padding."""
    from .windows import BLUR_KERNEL

    return max(patch, BLUR_KERNEL // 2 + 1) if params.image_engineering else patch


def minimum_short_side(long_side: int, params, patch: int) -> int:
    """The smallest short side an image with this long side may have under `params`."""
    need = minimum_side(params, patch)
    return 1 + bisect.bisect_left(
        range(1, long_side + 1),
        need,
        key=lambda short: min(
            resized_shape(short, long_side, params.short_side, params.max_long_side)
        ),
    )


def check_image_size(height: int, width: int, params, patch: int) -> None:
    """Raise ValueError unless a height x width image can be segmented with `params`.

    The resize makes the short side `short_side` but caps the long side at `max_long_side`, so
    a very thin image shrinks below one patch of the model (`patch` pixels) or below what the
    blur view needs; small images are upscaled and are fine.
    """
    need = minimum_side(params, patch)
    if min(params.crop, params.short_side) < need:
        raise ValueError(
            f"crop ({params.crop}) and short_side ({params.short_side}) must be at least {need} "
            f"pixels (one {patch}-pixel patch of the model)"
        )
    short, long = sorted((height, width))
    minimum = minimum_short_side(long, params, patch)
    if short < minimum:
        resized = resized_shape(height, width, params.short_side, params.max_long_side)
        raise ValueError(
            f"image of {height}x{width} pixels is too thin: resizing (short side "
            f"{params.short_side}, long side at most {params.max_long_side}) makes it "
            f"{resized[0]}x{resized[1]}, and each side needs at least {need} pixels (one "
            f"{patch}-pixel patch of the model); with a long side of {long} the short side must "
            f"be at least {minimum} pixels. Crop the image into shorter pieces or pad it."
        )


def probability_downsample_for_budget(
    n_classes: int,
    height: int,
    width: int,
    budget_bytes: float = PROBABILITY_BUDGET_BYTES,
    n_planes: int = 1,
) -> int:
    """The smallest factor f with n_planes x C x ceil(H / f) x ceil(W / f) float32 values
    within `budget_bytes`; max(H, W) (one value per class and plane) if even that exceeds it."""
    if not budget_bytes > 0:
        raise ValueError(f"the probability budget must be positive, got {budget_bytes!r} bytes")

    def size(factor: int) -> int:
        return n_planes * n_classes * math.ceil(height / factor) * math.ceil(width / factor) * 4

    # size(f) >= size(1) / f**2, so no factor below sqrt(size(1) / budget) fits
    coarsest = max(height, width)
    factor = min(max(1, math.isqrt(int(size(1) // budget_bytes))), coarsest)
    while size(factor) > budget_bytes and factor < coarsest:
        factor += 1
    return factor


def resize_short_side(rgb: np.ndarray, short_side: int, max_long_side: int = 2048) -> np.ndarray:
    """Resize uint8 RGB with OpenCV INTER_LINEAR as the reference does (upscaling small images)."""
    import cv2

    h, w = resized_shape(rgb.shape[0], rgb.shape[1], short_side, max_long_side)
    if (h, w) == rgb.shape[:2]:
        return rgb
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)


def normalise(rgb: np.ndarray):
    """uint8 (H, W, 3) -> float32 tensor (1, 3, H, W), (x - mean) / std on the 0-255 scale."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float()
    mean = torch.tensor(CLIP_MEAN_255).view(3, 1, 1)
    std = torch.tensor(CLIP_STD_255).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)

"""Input stage (METHOD.md section 1): any numpy image to uint8 RGB, resize, normalise."""

from __future__ import annotations

import numpy as np

# CLIP's mean and std on the 0-255 scale, RGB order.
CLIP_MEAN_255 = (122.771, 116.746, 104.094)
CLIP_STD_255 = (68.501, 66.632, 70.323)

# Non-uint8 images are mapped to 0-255 by these percentiles of all their values, so a few hot
# pixels in a 16-bit microscopy image do not squash everything else to black.
ROBUST_PERCENTILES = (0.5, 99.5)


def to_rgb_uint8(image) -> np.ndarray:
    """Return an (H, W, 3) uint8 RGB copy or view of `image`.

    Accepts (H, W) grey, (H, W, 1), (H, W, 3) RGB and (H, W, 4) RGBA (alpha ignored). uint8 is
    used as is; bool becomes 0/255; any other numeric dtype is contrast-normalised to 0-255 by
    the ROBUST_PERCENTILES of all its values (one mapping for all channels, so colours keep
    their balance).
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
    values = image.astype(np.float64, copy=False)
    if not np.isfinite(values).all():
        raise ValueError("image contains NaN or infinite values")
    lo, hi = np.percentile(values, ROBUST_PERCENTILES)
    if hi <= lo:
        lo, hi = values.min(), values.max()
    if hi <= lo:  # a constant image: keep it mid-grey rather than dividing by zero
        return np.full(image.shape, 128, np.uint8)
    scaled = (values - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def resized_shape(height: int, width: int, short_side: int, max_long_side: int) -> tuple[int, int]:
    """(h, w) after the reference's keep-ratio resize: short side -> S, long side <= max."""
    factor = min(max_long_side / max(height, width), short_side / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


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

"""One fixed colour per label value, shared by the napari layers and the command line (numpy only).

Which value a class has (its label id) is the label convention's, `labels.py`.

The palette is the PASCAL VOC colormap: the bits of a label value are spread over the high bits
of R, G and B, three at a time. Value 0 is black (background, or "unlabelled"), 1 dark red,
2 green, 3 olive, 4 navy, 15 (VOC "person") pink... Because a colour depends only on the value,
a class keeps its colour across runs, images and tools; values up to 2**24 - 1 get distinct
colours.
"""

from __future__ import annotations

import numpy as np


def class_colors(n: int) -> np.ndarray:
    """(n, 4) float RGBA in [0, 1]: row i is the colour of label value i (alpha 1)."""
    if n < 0:
        raise ValueError(f"the number of colours must be non-negative, got {n}")
    values = np.arange(n, dtype=np.int64)
    rgb = np.zeros((n, 3), np.int64)
    for bit in range(8):
        for channel in range(3):
            rgb[:, channel] |= ((values >> (3 * bit + channel)) & 1) << (7 - bit)
    rgba = np.ones((n, 4))
    rgba[:, :3] = rgb / 255.0
    return rgba


def class_colors_uint8(n: int) -> np.ndarray:
    """(n, 3) uint8 RGB of `class_colors` (a PNG palette)."""
    return np.rint(class_colors(n)[:, :3] * 255).astype(np.uint8)

"""What a segmentation returns, and the cancellation signal. numpy only (no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class Cancelled(Exception):
    """Raised by `ITACLIP.segment` when its `cancel()` callback returned True."""


@dataclass
class SegmentationResult:
    """The output of one `ITACLIP.segment` call.

    labels: (H, W) class ids at the original image size (uint8 up to 256 classes, else uint16).
    probabilities: (C, H', W') float32 class probabilities (docs/method.md §7.6). H' = ceil(H / f),
        W' = ceil(W / f) where f = `probability_factor` (1 unless a downsampled copy was asked for);
        a downsampled pixel is the mean of the f x f block it covers.
    class_names: the first name of each class, in class-id order.
    background: whether class 0 is a background class (its line held background words).
    parameters: every value needed to reproduce the run (JSON-serialisable).
    timings: seconds spent per stage.
    """

    labels: np.ndarray
    probabilities: np.ndarray
    class_names: list[str]
    background: bool
    parameters: dict
    timings: dict = field(default_factory=dict)
    probability_factor: int = 1

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def package_version() -> str:
    """The installed napari-itaclip version, for run records (read from the distribution, so
    the engine needs nothing from the package above it)."""
    from importlib import metadata

    try:
        return metadata.version("napari-itaclip")
    except metadata.PackageNotFoundError:
        return "unknown"

"""napari reader for result bundles (`*.itaclip`, and the older `*.itaclip.npz`; bundle.py)."""

from __future__ import annotations

from .bundle import check_bundle
from .labels import ResultRecord
from .layers import result_to_layer_data


def get_reader(path):
    """The bundle reader for one valid bundle (`*.itaclip`, `*.itaclip.npz`), else None
    (never raises)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        check_bundle(path)
    except (ValueError, KeyError, TypeError):
        return None
    return read_bundle


def read_bundle(path) -> list[tuple]:
    """The layers a bundle holds: probability images, then the labels (names, colours, scale)."""
    if isinstance(path, list):
        path = path[0]
    return result_to_layer_data(ResultRecord.from_bundle(path))

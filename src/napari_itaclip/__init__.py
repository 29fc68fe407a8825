"""napari-itaclip: training-free open-vocabulary segmentation (ITACLIP) for napari.

Heavy dependencies (torch, open_clip, napari) are imported lazily so that importing this
package, and starting napari with the plugin installed, stays fast.
"""

from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "ITACLIP": "napari_itaclip.engine",
    "SegmentationResult": "napari_itaclip.engine",
    "Cancelled": "napari_itaclip.engine",
    "PRESETS": "napari_itaclip.engine",
    "segment_layer": "napari_itaclip.api",
    "result_to_layer_data": "napari_itaclip.layers",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_itaclip' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value

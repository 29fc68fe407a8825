"""The ITACLIP engine: pure torch + numpy, no napari or Qt, nothing from the package above.

The names in `__all__` are its public interface: the faces (dock widget, notebook API,
command line) import only these, from `napari_itaclip.engine`. Each name loads its module on
first use, so importing the engine imports neither torch nor open_clip. One module per stage
(see docs/architecture.md); `segmenter.ITACLIP` composes them.
"""

from importlib import import_module

from .triton_guard import install_triton_guard

# Before any engine module imports torch (which may import triton): see triton_guard.
install_triton_guard()

_MODULE_EXPORTS = {
    "segmenter": ("ITACLIP",),
    "result": ("SegmentationResult", "Cancelled"),
    "request": ("Request", "prepare"),
    "examples": ("ExamplesBank",),
    "presets": ("Preset", "PRESETS", "PARAMETERS", "Parameter", "PAPER_SETTINGS"),
    "classes": ("ClassList", "parse_class_list", "builtin_class_set", "BUILTIN_CLASS_SETS"),
    "models": (
        "WeightsUnavailableError",
        "DEFAULT_MODEL",
        "DEFAULT_PRETRAINED",
        "WEIGHTS_ENV",
        "available_devices",
        "resolve_device",
        "cached_weights_path",
        "weights_cached",
    ),
    "precision": ("PRECISIONS",),
    "devices": ("device_choices",),
    "cache_folders": ("cache_root", "text_cache_folder", "text_cache_usage"),
    "image": ("to_rgb_uint8",),
    "native_libraries": ("import_without_pauses", "preload_torch_libraries"),
}
_MODULE_OF = {name: module for module, names in _MODULE_EXPORTS.items() for name in names}

__all__ = list(_MODULE_OF)


def __getattr__(name):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *__all__})

"""`napari-itaclip info`: versions, devices, cache folder and where the weights come from.

It answers in a fraction of a second: it imports neither torch nor open_clip (torch only to
name the GPUs where there are some).
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

OPTION_GROUPS = ("common",)
HELP = "versions, devices, cache folders, weights"
DESCRIPTION = (
    "Versions, available devices, cache folders and whether the default weights are cached."
)
PACKAGES = ("torch", "open_clip_torch", "numpy", "opencv-python-headless", "napari")


def add_arguments(parser) -> None:
    """No options of its own."""


def default_weights_status() -> str:
    """Where the default weights would come from, without downloading."""
    from ..engine import DEFAULT_MODEL, DEFAULT_PRETRAINED, WEIGHTS_ENV, cached_weights_path

    env = os.environ.get(WEIGHTS_ENV)
    if env:
        state = "present" if Path(env).is_file() else "MISSING"
        return f"${WEIGHTS_ENV} = {env} ({state})"
    cached = cached_weights_path(DEFAULT_MODEL, DEFAULT_PRETRAINED)
    if cached:
        return f"cached: {cached}"
    return "not cached: downloaded on first use (needs internet), or give --pretrained FILE"


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def device_names() -> list[str]:
    """The devices, GPUs by name. torch is imported only where a GPU may be there: naming it
    needs torch, whose answer then replaces the guess made without it."""
    from ..engine import device_choices

    devices, gpus = device_choices(), ""
    if "cuda" in devices:
        import torch

        devices = device_choices()
        gpus = ", ".join(
            sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        )
    return [f"cuda ({gpus})" if device == "cuda" else device for device in devices]


def run(args) -> int:
    from .. import __version__
    from ..engine import DEFAULT_MODEL, DEFAULT_PRETRAINED, text_cache_folder, text_cache_usage
    from . import EXIT_OK
    from .cache import human_size

    print(f"napari-itaclip {__version__}")
    print(f"python {platform.python_version()} on {platform.platform()}")
    for name in PACKAGES:
        print(f"{name} {_package_version(name)}")
    print(f"devices: {', '.join(device_names())}")
    entries, size = text_cache_usage()
    print(f"text-feature cache: {text_cache_folder()} ({entries} entries, {human_size(size)})")
    print(f"weights {DEFAULT_MODEL}/{DEFAULT_PRETRAINED}: {default_weights_status()}")
    return EXIT_OK

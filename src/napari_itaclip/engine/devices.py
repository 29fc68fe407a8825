"""Which devices to offer, answered without importing torch.

Importing torch takes seconds and holds the GIL; a dock widget that lists devices while
napari draws must not pay that on the GUI thread. Once torch is loaded its own answer is used
(`models.available_devices`); before that, the torch build and the machine are inspected:
a CUDA (or ROCm) build of torch plus a GPU driver means "cuda", macOS on Apple silicon means
"mps". A device offered here that turns out unusable is refused by `models.resolve_device`
with a clear message when a run starts.
"""

from __future__ import annotations

import ast
import ctypes.util
import importlib.util
import os
import platform
import sys
from pathlib import Path

# Files that exist when an NVIDIA or AMD GPU driver is loaded on Linux.
LINUX_GPU_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidia0", "/dev/kfd")


def torch_build_gpu() -> bool:
    """Whether the installed torch was built for CUDA or ROCm (read from torch/version.py)."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return False
    version_file = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    try:
        tree = ast.parse(version_file.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return False
    for node in tree.body:
        target = getattr(node, "target", None) or (getattr(node, "targets", None) or [None])[0]
        if isinstance(target, ast.Name) and target.id in ("cuda", "hip"):
            value = getattr(node, "value", None)
            if isinstance(value, ast.Constant) and value.value:
                return True
    return False


def gpu_driver_present() -> bool:
    if sys.platform.startswith("linux"):
        return any(os.path.exists(path) for path in LINUX_GPU_DRIVER_FILES)
    if sys.platform == "win32":
        return ctypes.util.find_library("nvcuda") is not None
    return False


def device_choices() -> list[str]:
    """Devices worth offering, best first ("cuda", "mps", "cpu"), without importing torch."""
    if "torch" in sys.modules:
        from .models import available_devices

        return available_devices()
    devices = []
    if torch_build_gpu() and gpu_driver_present():
        devices.append("cuda")
    if sys.platform == "darwin" and platform.machine() == "arm64":
        devices.append("mps")
    return [*devices, "cpu"]

"""Import torch and its company without freezing a GUI that runs in another thread.

`import torch` maps about a gigabyte of shared libraries (libtorch_cpu, and libtorch_cuda
with the CUDA runtime in PyPI's default build). Python's import machinery and ctypes.CDLL
call dlopen while holding the GIL, so a worker thread importing torch froze napari's event
loop for half a second at a time. Calling libc's dlopen through a ctypes foreign function
releases the GIL for the call; the libraries are then already mapped when the import asks for
them, and only their Python-level initialisation remains. Linux only; elsewhere, or when
torch is already imported, nothing is done.

That initialisation creates millions of objects, and each time the heap grows by a quarter
Python's cyclic garbage collector walks all of it, holding the GIL: with torch, torchvision
and open_clip that was 100-160 ms at a time. `import_without_pauses` keeps the collector off
during the imports and then freezes what they made (`gc.freeze`: modules, classes and
functions live as long as the process anyway), so later collections skip those objects.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import glob
import importlib
import importlib.util
import logging
import os
import sys
from contextlib import contextmanager

logger = logging.getLogger(__name__)


def _gil_free_dlopen():
    for library in (None, ctypes.util.find_library("dl")):
        try:
            dlopen = ctypes.CDLL(library).dlopen
        except (OSError, AttributeError):
            continue
        dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
        dlopen.restype = ctypes.c_void_p
        return dlopen
    return None


def torch_library_paths() -> list[tuple[str, int]]:
    """(path, dlopen mode) in the order torch loads them itself: its global dependencies
    with RTLD_GLOBAL (as `torch._load_global_deps` does), then its extension module."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = next(iter(spec.submodule_search_locations))
    paths = [(os.path.join(folder, "lib", "libtorch_global_deps.so"), os.RTLD_GLOBAL)]
    paths += [(path, 0) for path in sorted(glob.glob(os.path.join(folder, "_C.*.so")))]
    return [(path, mode | os.RTLD_NOW) for path, mode in paths if os.path.isfile(path)]


def preload_torch_libraries() -> int:
    """Map torch's shared libraries with the GIL released; returns how many were loaded."""
    if not sys.platform.startswith("linux") or "torch" in sys.modules:
        return 0
    dlopen = _gil_free_dlopen()
    if dlopen is None:
        return 0
    loaded = 0
    for path, mode in torch_library_paths():
        # A failure is left to `import torch`, which reports it properly.
        if dlopen(os.fsencode(path), mode):
            loaded += 1
        else:
            logger.debug("preloading %s failed; torch's import will say why", path)
    return loaded


# What loading a model imports: most of the objects a first run creates.
MODEL_LIBRARIES = ("torch", "torchvision", "open_clip")


@contextmanager
def collector_paused():
    """No cyclic garbage collection within the block; what it made is frozen at the end."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def import_without_pauses(*names: str) -> None:
    """Import these modules (by default the model's libraries) without long GIL holds: torch's
    libraries mapped with the GIL released, the garbage collector paused meanwhile."""
    names = names or MODEL_LIBRARIES
    if all(name in sys.modules for name in names):
        return
    if "torch" in names:
        preload_torch_libraries()
    with collector_paused():
        for name in names:
            importlib.import_module(name)

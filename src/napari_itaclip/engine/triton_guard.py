"""Keep `triton` out of processes whose OpenGL driver has already loaded LLVM.

PyPI's Linux torch wheels depend on `triton`, which torchvision.ops and parts of torch import
on first use. triton (3.7 and later) carries its own copy of LLVM with exported symbols. When
Mesa's OpenGL driver (llvmpipe, radeonsi, iris, ...) has already mapped a system libLLVM into
the process, as it has as soon as napari creates a viewer, loading triton next to it kills the
process with a segmentation fault. Loading triton first and the driver later is fine.

So the decision is taken at the moment triton is imported, whoever imports it: an import hook
checks whether an LLVM library is mapped and, if so, makes that import fail with ImportError,
which torch treats as "triton is not installed". The engine never needs triton (it runs no
torch.compile). See docs/troubleshooting.md.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import sys

logger = logging.getLogger(__name__)

# Set to 1 to let triton load anyway (for example to use torch.compile in the same process).
ALLOW_ENV = "NAPARI_ITACLIP_ALLOW_TRITON"
MAPS = "/proc/self/maps"


def mapped_llvm_library(maps_path: str = MAPS) -> str | None:
    """The path of an LLVM shared library mapped into this process, if any (Linux only)."""
    try:
        with open(maps_path, encoding="utf-8", errors="replace") as maps:
            for line in maps:
                _, slash, path = line.rstrip("\n").partition("/")
                if slash and os.path.basename(path).startswith("libLLVM"):
                    return "/" + path
    except OSError:
        return None
    return None


class _RefuseImport(importlib.abc.Loader):
    def __init__(self, reason: str):
        self.reason = reason

    def create_module(self, spec):
        raise ImportError(self.reason, name=spec.name)

    def exec_module(self, module):  # never reached: create_module raises
        raise ImportError(self.reason)


class TritonGuard(importlib.abc.MetaPathFinder):
    """Meta path finder that refuses `triton` while a system LLVM is mapped."""

    def __init__(self, maps_path: str = MAPS):
        self.maps_path = maps_path

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "triton" or os.environ.get(ALLOW_ENV, "") not in ("", "0"):
            return None
        library = mapped_llvm_library(self.maps_path)
        if library is None:
            return None
        reason = (
            f"triton was not loaded: {library} is already loaded (by the OpenGL driver) and "
            f"loading triton next to it crashes the process; set {ALLOW_ENV}=1 to load it anyway"
        )
        logger.info("napari-itaclip: %s", reason)
        # Later imports fail at once and importlib.util.find_spec returns None; this one
        # fails when the returned spec is loaded.
        sys.modules[fullname] = None
        return importlib.machinery.ModuleSpec(fullname, _RefuseImport(reason))


def install_triton_guard() -> bool:
    """Install the guard once per process (Linux only, and only while triton is not loaded).

    Returns True when the guard is in place.
    """
    if not sys.platform.startswith("linux"):
        return False
    if any(isinstance(finder, TritonGuard) for finder in sys.meta_path):
        return True
    if sys.modules.get("triton") is not None:
        return False  # loaded before any LLVM: nothing left to guard
    sys.meta_path.insert(0, TritonGuard())
    return True

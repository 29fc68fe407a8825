"""Device choices without importing torch, and torch's libraries loaded off the GIL."""

from __future__ import annotations

import subprocess
import sys

import pytest

from napari_itaclip.engine import devices


def test_torch_build_is_read_without_importing_torch():
    import torch

    assert devices.torch_build_gpu() == bool(torch.version.cuda or torch.version.hip)


@pytest.mark.parametrize(
    ("build_gpu", "driver", "platform", "machine", "expected"),
    [
        (True, True, "linux", "x86_64", ["cuda", "cpu"]),
        (True, False, "linux", "x86_64", ["cpu"]),  # CUDA wheel on a machine without a GPU
        (False, True, "linux", "x86_64", ["cpu"]),  # CPU wheel next to a GPU
        (False, False, "darwin", "arm64", ["mps", "cpu"]),
        (False, False, "darwin", "x86_64", ["cpu"]),
    ],
)
def test_device_choices_before_torch_is_imported(
    monkeypatch, build_gpu, driver, platform, machine, expected
):
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setattr(devices, "torch_build_gpu", lambda: build_gpu)
    monkeypatch.setattr(devices, "gpu_driver_present", lambda: driver)
    monkeypatch.setattr(devices.sys, "platform", platform)
    monkeypatch.setattr(devices.platform, "machine", lambda: machine)
    assert devices.device_choices() == expected


def test_device_choices_once_torch_is_loaded_are_torchs_own():
    import torch  # noqa: F401

    from napari_itaclip.engine.models import available_devices

    assert devices.device_choices() == available_devices()


PRELOAD = """
import sys
from napari_itaclip.engine.native_libraries import preload_torch_libraries
loaded = preload_torch_libraries()
assert "torch" not in sys.modules
import torch
assert float(torch.ones(3).sum()) == 3.0
print("loaded", loaded, "again", preload_torch_libraries())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="dlopen preloading is Linux only")
def test_preloaded_libraries_serve_torchs_own_import():
    done = subprocess.run(
        [sys.executable, "-c", PRELOAD], capture_output=True, text=True, check=True
    )
    # libtorch_global_deps and torch's extension module; nothing once torch is imported.
    assert "loaded 2 again 0" in done.stdout


FULL_COLLECTIONS_DURING_IMPORT = """
import gc, sys
from napari_itaclip.engine.native_libraries import import_without_pauses
full = []
gc.callbacks.append(lambda phase, info: full.append(1) if phase == "start"
                    and info["generation"] == 2 else None)
if sys.argv[1] == "paused":
    import_without_pauses()
else:
    import torch, torchvision, open_clip
gc.callbacks.clear()
print("full collections", len(full), "enabled", gc.isenabled(), "frozen", gc.get_freeze_count())
"""


@pytest.mark.parametrize("how", ["plain", "paused"])
def test_model_libraries_import_without_full_collections(how):
    """A full collection walks the whole heap holding the GIL (100-160 ms with torch loaded):
    the plain import runs several; `import_without_pauses` none, and leaves the collector on
    with the imported objects frozen."""
    done = subprocess.run(
        [sys.executable, "-c", FULL_COLLECTIONS_DURING_IMPORT, how],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    words = done.stdout.split()
    full, enabled, frozen = int(words[2]), words[4], int(words[6])
    assert enabled == "True"
    if how == "plain":
        assert full > 0  # what the pause is for: without it the collector walks the heap
    else:
        assert full == 0 and frozen > 100_000


def test_collector_paused_keeps_a_disabled_collector_disabled():
    import gc

    from napari_itaclip.engine.native_libraries import collector_paused

    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.unfreeze()

"""Runs in the user's order: napari and its OpenGL context first, the plugin's engine later.

Each scenario runs in a fresh Python process (import order is the point), under the X server
the suite runs in. Mesa's OpenGL driver maps a system libLLVM as soon as a viewer exists, and
importing triton (which torch and torchvision import on first use) next to it killed napari
with a segmentation fault; these tests would die the same way if that came back.

Nothing in this module imports torch or napari into the test process before the
subprocesses run, apart from the session fixture that writes the tiny weights file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from napari_itaclip.engine.triton_guard import ALLOW_ENV, TritonGuard, mapped_llvm_library

pytestmark = pytest.mark.gui

VIEWER_FIRST = """
import napari
viewer = napari.Viewer(show=False)
"""

ADD_IMAGE = """
import numpy as np
rng = np.random.default_rng(0)
image = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
viewer.add_image(image, name="photo")
"""

WIDGET_RUN = """
import time
from qtpy.QtWidgets import QApplication
_, widget = viewer.window.add_plugin_dock_widget("napari-itaclip", "ITACLIP segmentation")
widget.weights.value = WEIGHTS
widget.device.value = "cpu"
widget.classes.value = "background\\ncat\\ndog"
widget.preset.value = "fast"
widget.short_side.value = 64
assert widget.run() is not None, "Run was refused"
deadline = time.monotonic() + 300
while widget.running and time.monotonic() < deadline:
    QApplication.processEvents()
    time.sleep(0.01)
assert not widget.running, "the run did not finish"
assert "photo labels" in [layer.name for layer in viewer.layers], list(viewer.layers)
print("widget run done")
"""

NOTEBOOK_RUN = """
from napari_itaclip import segment_layer
layers = segment_layer(viewer, "photo", ["sky", "grass"], pretrained=WEIGHTS, device="cpu",
                       preset="fast", short_side=64, background=False, progress=False)
assert layers[0].data.shape == (60, 80), layers[0].data.shape
print("segment_layer done")
"""

REPORT_TRITON = """
import sys
print("llvm mapped:", any("libLLVM" in line for line in open("/proc/self/maps")))
print("triton:", "loaded" if sys.modules.get("triton") is not None else "not loaded")
"""


def run_script(body: str, weights, extra_env: dict | None = None) -> str:
    script = f"WEIGHTS = {str(weights)!r}\n" + textwrap.dedent(body)
    env = {**os.environ, **(extra_env or {})}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, (
        f"exit code {done.returncode} (-11 is a segmentation fault)\n"
        f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    )
    return done.stdout


@pytest.mark.slow
def test_viewer_first_then_widget_run_then_segment_layer(tiny_weights):
    out = run_script(VIEWER_FIRST + ADD_IMAGE + WIDGET_RUN + NOTEBOOK_RUN + REPORT_TRITON,
                     tiny_weights)  # fmt: skip
    assert "widget run done" in out and "segment_layer done" in out
    if "llvm mapped: True" in out:  # Mesa here: the guard must have kept triton out
        assert "triton: not loaded" in out


@pytest.mark.slow
def test_package_import_then_viewer_then_run(tiny_weights):
    out = run_script("import napari_itaclip\n" + VIEWER_FIRST + ADD_IMAGE + NOTEBOOK_RUN,
                     tiny_weights)  # fmt: skip
    assert "segment_layer done" in out


@pytest.mark.slow
def test_engine_imported_before_the_viewer_then_run(tiny_weights):
    # The engine (not torch) loaded before the viewer: triton is decided at its own import.
    out = run_script(
        "import napari_itaclip.engine.classes\n" + VIEWER_FIRST + ADD_IMAGE + NOTEBOOK_RUN,
        tiny_weights,
    )
    assert "segment_layer done" in out


# ------------------------------------------------------------------------ the guard alone
def fake_maps(tmp_path, library: str | None):
    lines = ["7f0000000000-7f0000001000 r-xp 00000000 00:00 0 [vdso]"]
    if library:
        lines.append(f"7f0000002000-7f0000003000 r-xp 00000000 08:01 42 {library}")
    lines.append("7f0000004000-7f0000005000 r-xp 00000000 08:01 43 /usr/lib/libc.so.6")
    path = tmp_path / "maps"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_llvm_library_is_found_in_the_process_maps(tmp_path):
    library = "/usr/lib/x86_64-linux-gnu/libLLVM-15.so.1"
    assert mapped_llvm_library(fake_maps(tmp_path, library)) == library
    assert mapped_llvm_library(fake_maps(tmp_path, None)) is None
    assert mapped_llvm_library(str(tmp_path / "missing")) is None


def test_guard_refuses_triton_only_while_llvm_is_mapped(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    monkeypatch.delitem(sys.modules, "triton", raising=False)
    assert TritonGuard(fake_maps(tmp_path, None)).find_spec("triton") is None
    guard = TritonGuard(fake_maps(tmp_path, "/usr/lib/libLLVM.so.19.1"))
    assert guard.find_spec("triton.language") is None  # only the top-level name is decided
    with caplog.at_level("INFO", logger="napari_itaclip.engine.triton_guard"):
        spec = guard.find_spec("triton")
    assert spec is not None
    assert sys.modules["triton"] is None  # later imports fail at once, find_spec gives None
    with pytest.raises(ImportError, match="libLLVM.so.19.1"):
        spec.loader.create_module(spec)
    assert "NAPARI_ITACLIP_ALLOW_TRITON" in caplog.text


def test_guard_can_be_switched_off(tmp_path, monkeypatch):
    monkeypatch.setenv(ALLOW_ENV, "1")
    monkeypatch.delitem(sys.modules, "triton", raising=False)
    assert TritonGuard(fake_maps(tmp_path, "/usr/lib/libLLVM-15.so.1")).find_spec("triton") is None
    assert "triton" not in sys.modules


DOCK_ONLY = """
import sys, time
t = time.perf_counter()
_, widget = viewer.window.add_plugin_dock_widget("napari-itaclip", "ITACLIP segmentation")
print("dock seconds", time.perf_counter() - t)
print("torch imported:", "torch" in sys.modules)
print("devices:", list(widget.device.choices))
"""


def test_docking_the_widget_does_not_import_torch(tiny_weights):
    out = run_script(VIEWER_FIRST + ADD_IMAGE + DOCK_ONLY, tiny_weights)
    assert "torch imported: False" in out
    assert "'auto'" in out and "'cpu'" in out


RESPONSIVENESS = """
import faulthandler, json, sys, time
WATCHDOG_S = globals().get("WATCHDOG_S")
import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication
viewer = napari.Viewer(show=True)
app = QApplication.instance()
viewer.add_image(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8),
                 name="photo")
def spin(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.002)
spin(1.0)  # the new window's first paints
ticks = []
timer = QTimer()
timer.setInterval(5)
def tick():
    ticks.append(time.perf_counter())
    if WATCHDOG_S:  # benchmarks/bench_gui.py --why: every thread's stack when a tick is late
        faulthandler.dump_traceback_later(WATCHDOG_S, file=sys.stdout)
timer.timeout.connect(tick)
timer.start()
_, widget = viewer.window.add_plugin_dock_widget("napari-itaclip", "ITACLIP segmentation")
widget.weights.value = WEIGHTS
widget.device.value = "cpu"
widget.classes.value = "background\\ncup\\ncoffee\\ntable"
widget.preset.value = "fast"
spin(0.5)
assert widget.run() is not None
deadline = time.monotonic() + 300
while widget.running and time.monotonic() < deadline:
    app.processEvents()
    time.sleep(0.002)
spin(0.5)
timer.stop()
faulthandler.cancel_dump_traceback_later()
assert "photo labels" in [layer.name for layer in viewer.layers]
gaps = (np.diff(ticks) * 1000).tolist()
print("GAPS", json.dumps(gaps))
"""


@pytest.mark.slow
def test_gui_stays_responsive_through_a_whole_first_run(tiny_weights):
    """Docking, importing torch, loading the model, segmenting and adding the layers: a 5 ms
    timer on napari's event loop keeps firing, in a fresh process, in the user's order.

    The 250 ms target is measured by benchmarks/bench_gui.py (docs/performance.md); on a
    machine shared with other work single gaps vary by 100 ms, so this test guards against
    the freezes it was written for (2 s docking, 1.4 s adding layers, 0.6 s dlopen)."""
    import json

    import numpy as np

    out = run_script("import napari\n" + RESPONSIVENESS, tiny_weights)
    gaps = np.array(json.loads(out.split("GAPS", 1)[1]))
    print(
        f"\nevent-loop gaps through a first run: median {np.median(gaps):.1f} ms, "
        f"p99 {np.percentile(gaps, 99):.1f} ms, max {gaps.max():.1f} ms over {len(gaps)} ticks"
    )
    assert len(gaps) > 200
    assert np.percentile(gaps, 99) < 200
    assert gaps.max() < 500

"""Importing the package (as napari does at startup) must stay fast and light."""

from __future__ import annotations

import json
import subprocess
import sys

MEASURE = """
import json, sys, time
start = time.perf_counter()
import napari_itaclip
elapsed = time.perf_counter() - start
light = sorted(m for m in ("torch", "open_clip", "napari", "qtpy", "cv2") if m in sys.modules)
import napari_itaclip._reader, napari_itaclip._writer, napari_itaclip._sample_data
import napari_itaclip.bundle, napari_itaclip.colors, napari_itaclip.layers, napari_itaclip.api
heavy = sorted(m for m in ("torch", "open_clip") if m in sys.modules)
print(json.dumps({"seconds": elapsed, "package": light, "modules": heavy}))
"""


def measure() -> dict:
    done = subprocess.run(
        [sys.executable, "-c", MEASURE], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_is_fast_and_imports_no_heavy_dependency():
    # best of three: the first run may pay for a cold disk cache
    runs = [measure() for _ in range(3)]
    seconds = min(run["seconds"] for run in runs)
    print(f"\nimport napari_itaclip: {seconds * 1000:.1f} ms")
    assert seconds < 0.5
    assert runs[0]["package"] == []  # not even napari or Qt


def test_reader_writer_samples_and_api_modules_do_not_import_torch():
    # napari imports these when opening a file or a sample; torch loads only for a run
    assert measure()["modules"] == []


INFO = """
import json, sys, time
from napari_itaclip.cli import main
start = time.perf_counter()
code = main(["info"])
elapsed = time.perf_counter() - start
heavy = sorted(m for m in ("torch", "open_clip", "torchvision") if m in sys.modules)
print(json.dumps({"code": code, "seconds": elapsed, "modules": heavy}))
"""


def test_info_answers_without_torch_or_open_clip(weight_caches, tmp_path):
    from napari_itaclip.cli.info import PACKAGES
    from napari_itaclip.engine.devices import gpu_driver_present, torch_build_gpu

    planted = weight_caches("timm/vit_base_patch16_clip_224.openai", "open_clip_model.safetensors")
    done = subprocess.run([sys.executable, "-c", INFO], capture_output=True, text=True, check=True)
    *lines, last = done.stdout.strip().splitlines()
    measured = json.loads(last)
    print(f"\nnapari-itaclip info: {measured['seconds'] * 1000:.0f} ms")
    assert measured["code"] == 0
    assert [line.split(" ")[0] for line in lines[2 : 2 + len(PACKAGES)]] == list(PACKAGES)
    assert lines[0].startswith("napari-itaclip ") and lines[1].startswith("python ")
    assert lines[-3].startswith("devices: ") and lines[-3].endswith("cpu")
    assert lines[-2] == f"text-feature cache: {tmp_path / 'cache' / 'text'} (0 entries, 0 B)"
    assert lines[-1] == f"weights ViT-B-16/openai: cached: {planted}"
    # torch is imported only to name the GPUs where there may be some
    assert measured["modules"] == (["torch"] if torch_build_gpu() and gpu_driver_present() else [])

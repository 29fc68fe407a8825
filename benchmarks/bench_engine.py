"""Engine benchmark: per-stage times, encoder passes/s, peak memory, ratio to a naive loop.

Runs full-size ViT-B/16 with random weights (the real cost; no download needed). Each
scenario runs in a fresh subprocess so its peak memory is its own.

    python benchmarks/bench_engine.py                    # all scenarios on the best device
    python benchmarks/bench_engine.py --device cpu --scenarios text segment
    python benchmarks/bench_engine.py --json results.json

Scenarios:
  text     VOC21 class list (80 names) + 20 aux texts = 8,000 prompts: first use (truncated,
           batched), the same prompts at full 77-token length, cached in memory and on disk.
  segment  voc21 paper preset on a 500x375 image: stage times, passes/s, and the same windows
           through the same encoder one crop and one view at a time (the naive loop).
  memory   coco_stuff preset (171 classes) on a 640x480 image: peak memory.
  large    voc21 preset on a 4000x3000 image: peak memory and time.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def machine(device: str) -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def make_segmenter(device: str, cache_dir):
    import open_clip
    import torch

    from napari_itaclip import ITACLIP

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None)
    return ITACLIP.from_open_clip(model, device=device, cache_dir=cache_dir)


def test_image(height: int, width: int) -> np.ndarray:
    import cv2
    from skimage import data

    return cv2.resize(data.astronaut(), (width, height), interpolation=cv2.INTER_AREA)


def synthetic_aux_text(class_names: list[str]) -> str:
    """Definition-like lines of typical length (written here, not the paper's LLM texts)."""
    return "\n".join(
        f"{name} >=a {name} as it appears in everyday photographs, seen from near or far, "
        "indoors or outdoors, alone or among other objects."
        for name in class_names
    )


def peak_memory_mb(device: str) -> dict:
    import torch

    peak = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.startswith("cuda"):
        peak["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peak


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def scenario_text(device: str, full_sample: float) -> dict:
    import torch

    from napari_itaclip.engine.classes import parse_aux_text, parse_class_list
    from napari_itaclip.engine.models import autocast
    from napari_itaclip.engine.text import templates

    with tempfile.TemporaryDirectory() as cache:
        seg = make_segmenter(device, cache)
        classes = parse_class_list("voc21", background=True)
        aux = parse_aux_text(synthetic_aux_text(classes.class_names[1:]), classes)
        n_prompts = (len(classes.queries) + len(aux)) * len(templates())
        fingerprint_start = time.perf_counter()
        seg.text_cache  # noqa: B018 - the fingerprint is computed once per model
        fingerprint = time.perf_counter() - fingerprint_start

        start = time.perf_counter()
        seg.text_features(classes, aux, 0.05)
        sync(device)
        first_use = time.perf_counter() - start

        start = time.perf_counter()
        seg.text_features(classes, aux, 0.05)
        memory_cached = time.perf_counter() - start

        fresh = make_segmenter(device, cache)
        start = time.perf_counter()
        fresh.text_features(classes, aux, 0.05)
        disk_cached = time.perf_counter() - start

        # Full 77-token encoding of a sample of the same prompts, scaled to all of them.
        prompts = [t(q) for q in classes.queries + aux for t in templates()]
        rng = np.random.default_rng(0)
        sample = rng.choice(len(prompts), max(1, int(len(prompts) * full_sample)), replace=False)
        tokens = seg.tokenizer([prompts[i] for i in sample]).to(seg.device)
        start = time.perf_counter()
        with torch.inference_mode(), autocast(seg.device, seg.precision):
            for batch in tokens.split(256):
                seg.model.encode_text(batch)
        sync(device)
        full_length = (time.perf_counter() - start) * len(prompts) / len(sample)
    return {
        "prompts": n_prompts,
        "first_use_s": first_use,
        "full_length_s": full_length,
        "full_length_sampled_fraction": full_sample,
        "speedup_vs_full_length": full_length / first_use,
        "cached_in_memory_s": memory_cached,
        "cached_on_disk_new_segmenter_s": disk_cached,
        "fingerprint_s": fingerprint,
        **peak_memory_mb(device),
    }


def naive_window_logits(seg, normalised, text, params):
    """The same windows and encoder, one crop and one view at a time."""
    import torch

    from napari_itaclip.engine.encoder import encode_dense, patch_size
    from napari_itaclip.engine.models import autocast
    from napari_itaclip.engine.windows import (
        crop_views,
        sliding_windows,
        stitch_window,
        views_to_grid_logits,
    )

    _, h, w = normalised.shape
    canvas = torch.zeros((text.shape[0], h, w), device=seg.device)
    count = torch.zeros((h, w), device=seg.device)
    for window in sliding_windows(h, w, params.crop, params.stride):
        crop = normalised[None, :, window.y0 : window.y1, window.x0 : window.x1]
        grid = tuple(
            s // p for s, p in zip(crop.shape[-2:], patch_size(seg.model.visual), strict=False)
        )
        with autocast(seg.device, seg.precision):
            tokens = torch.cat(
                [
                    encode_dense(seg.model.visual, view[None])
                    for view in crop_views(crop, params.image_engineering)
                ]
            )
        logits = views_to_grid_logits(tokens, text, grid, params.image_engineering, params.c_img)
        stitch_window(canvas, count, logits[0], window)
    return canvas / count


def scenario_segment(device: str, naive: bool, rounds: int) -> dict:
    import torch

    from napari_itaclip.engine import image as image_stage
    from napari_itaclip.engine.classes import parse_class_list
    from napari_itaclip.engine.presets import resolve_preset
    from napari_itaclip.engine.windows import N_VIEWS, sliding_windows

    seg = make_segmenter(device, False)
    image = test_image(375, 500)
    seg.segment(image[:64, :64], "voc21", preset="fast")  # warm-up, text cached
    sync(device)
    result = seg.segment(image, "voc21", preset="voc21")
    sync(device)
    params = resolve_preset("voc21", {})
    resized = result.parameters["resized_shape"]
    passes = len(sliding_windows(*resized, params.crop, params.stride)) * N_VIEWS
    out = {
        "image": [375, 500],
        "resized": resized,
        "encoder_passes": passes,
        "timings_s": result.timings,
        "encoder_passes_per_s": passes / result.timings["encoder"],
        "batch_size": seg.batch_size,
        **peak_memory_mb(device),
    }
    if naive:
        classes = parse_class_list("voc21", True)
        with torch.inference_mode():
            text = seg.text_features(classes, None, 0)
            normalised = image_stage.normalise(
                image_stage.resize_short_side(image, params.short_side)
            )[0].to(seg.device)

            def batched():
                return seg.window_logits(normalised, text, params, lambda *a: None, lambda: None)

            def looped():
                return naive_window_logits(seg, normalised, text, params)

            # Shared machines drift: alternate the two, swapping the order every round, and
            # compare medians.
            times = {"batched": [], "naive": []}
            outputs = {}
            for round_ in range(rounds):
                order = [("batched", batched), ("naive", looped)]
                for name, run in order if round_ % 2 == 0 else order[::-1]:
                    start = time.perf_counter()
                    logits = run()
                    sync(device)
                    times[name].append(time.perf_counter() - start)
                    outputs[name] = logits
        batched_s, naive_s = (float(np.median(times[k])) for k in ("batched", "naive"))
        out["batched_encoder_s_rounds"] = times["batched"]
        out["naive_encoder_s_rounds"] = times["naive"]
        out["naive_encoder_s"] = naive_s
        out["batched_encoder_s"] = batched_s
        out["naive_max_abs_diff"] = float((outputs["batched"] - outputs["naive"]).abs().max())
        out["speedup_vs_naive_encoder"] = naive_s / batched_s
        other = result.timings["total"] - result.timings["encoder"]
        out["speedup_vs_naive_total"] = (naive_s + other) / (batched_s + other)
    return out


def scenario_whole_run(device: str, shape: tuple[int, int], preset: str) -> dict:
    """One segment call on a fresh model, uncached text, for its peak memory and time."""
    seg = make_segmenter(device, False)
    start = time.perf_counter()
    result = seg.segment(test_image(*shape), preset, preset=preset)
    return {
        "image": list(shape),
        "preset": preset,
        "classes": result.n_classes,
        "queries": len(result.parameters["classes"].replace("\n", ", ").split(", ")),
        "total_s": time.perf_counter() - start,
        "timings_s": result.timings,
        "band_memory_mb": seg.band_memory_mb,
        **peak_memory_mb(device),
    }


def run_scenario(name: str, args) -> dict:
    if name == "text":
        return scenario_text(args.device, args.full_sample)
    if name == "segment":
        return scenario_segment(args.device, not args.skip_naive, args.rounds)
    if name == "memory":
        return scenario_whole_run(args.device, (480, 640), "coco_stuff")
    if name == "large":
        return scenario_whole_run(args.device, (3000, 4000), "voc21")
    raise ValueError(name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: best present)")
    parser.add_argument("--scenarios", nargs="+", default=["text", "segment", "memory", "large"])
    parser.add_argument(
        "--full-sample",
        type=float,
        default=0.1,
        help="fraction of prompts encoded at full length for the text baseline",
    )
    parser.add_argument("--skip-naive", action="store_true", help="skip the naive-loop comparison")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="segment scenario: alternating batched/naive rounds (medians are compared)",
    )
    parser.add_argument("--json", type=Path, help="write all results to this JSON file")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one scenario in-process
    args = parser.parse_args(argv)
    if args.device is None:
        from napari_itaclip.engine.models import available_devices

        args.device = available_devices()[0]
    if args.one:
        print(json.dumps(run_scenario(args.one, args)))
        return 0
    results = {"machine": machine(args.device), "scenarios": {}}
    for name in args.scenarios:
        log(f"running {name} on {args.device} ...")
        cmd = [
            sys.executable,
            __file__,
            "--one",
            name,
            "--device",
            args.device,
            "--full-sample",
            str(args.full_sample),
            "--rounds",
            str(args.rounds),
        ] + (["--skip-naive"] if args.skip_naive else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            log(proc.stderr[-3000:])
            results["scenarios"][name] = {"error": proc.stderr.strip().splitlines()[-1:]}
            continue
        results["scenarios"][name] = json.loads(proc.stdout.strip().splitlines()[-1])
        log(json.dumps(results["scenarios"][name], indent=2))
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Engine benchmark: per-stage times, encoder passes/s, peak memory, ratio to a naive loop,
precision agreement and throughput, checked against the targets (docs/performance.md).

Runs full-size ViT-B/16 with random weights (the real cost; no download needed; --pretrained
takes a tag or weights file instead). Each scenario runs in a fresh subprocess so its peak
memory is its own. Every timed run follows an untimed one at the same image size and preset
(a warm-up: CUDA initialisation, kernel selection and allocator growth are not timed).

    python benchmarks/bench_engine.py                    # the device's scenarios
    python benchmarks/bench_engine.py --device cuda --json cuda.json
    python benchmarks/bench_engine.py --device cpu --quick --scenarios segment precision throughput

Scenarios (default: text, segment, memory, large on the CPU; all of them elsewhere):
  text        VOC21 class list (80 names) + 20 aux texts = 8,000 prompts: first use (truncated,
              batched), the same prompts at full 77-token length, cached in memory and on disk.
  segment     voc21 paper preset on a 500x375 image, text cached: stage times, passes/s, and
              the same windows through the same encoder one crop and one view at a time (the
              naive loop).
  precision   the same run in fp32 on the device against fp32 on the CPU (largest probability
              difference), and the labels of fp16 and fp16-cast (bf16 on the CPU) against fp32.
  throughput  images/s over 64 different 500x375 images, presets fast and voc21.
  memory      coco_stuff preset (171 classes) on a 640x480 image: peak memory.
  large       voc21 preset on a 4000x3000 image: peak memory and time.

--quick shrinks every run (short side 112: one window per image; 4 images for throughput; 1
naive round) to check that the script runs, on any machine; its figures mean nothing.
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

from engine_targets import targets

THROUGHPUT_IMAGES = 64
QUICK_OPTIONS = {"short_side": 112}  # one window per 500x375 image


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


def make_segmenter(device: str, cache_dir, args, precision="auto", image_cache_mb=0):
    """Full-size ViT-B/16 (random weights, the same for every call, unless --pretrained);
    no kept image features, so that every run is a full run."""
    import open_clip
    import torch

    from napari_itaclip import ITACLIP

    settings = {"cache_dir": cache_dir, "image_cache_mb": image_cache_mb}
    if args.pretrained:
        return ITACLIP.from_pretrained("ViT-B-16", args.pretrained, device, precision, **settings)
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None)
    return ITACLIP.from_open_clip(model, device=device, precision=precision, **settings)


def test_image(height: int, width: int, shift: int = 0) -> np.ndarray:
    import cv2
    from skimage import data

    image = cv2.resize(data.astronaut(), (width, height), interpolation=cv2.INTER_AREA)
    return np.roll(image, shift, axis=1)  # shifted copies: different pixels, same content


def run_options(args) -> dict:
    return dict(QUICK_OPTIONS) if args.quick else {}


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
        peak["peak_cuda_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
    return peak


def sync(device: str) -> None:
    import torch

    from napari_itaclip.engine.device_sync import synchronize

    synchronize(torch.device(device))


def scenario_text(args) -> dict:
    import torch

    from napari_itaclip.engine.classes import parse_aux_text, parse_class_list
    from napari_itaclip.engine.models import autocast
    from napari_itaclip.engine.text import templates

    device = args.device
    with tempfile.TemporaryDirectory() as cache:
        seg = make_segmenter(device, cache, args)
        classes = parse_class_list("voc21", background=True)
        aux = parse_aux_text(synthetic_aux_text(classes.class_names[1:]), classes)
        n_prompts = (len(classes.queries) + len(aux)) * len(templates())
        fingerprint_start = time.perf_counter()
        seg.text_cache  # noqa: B018 - the fingerprint is computed once per model
        fingerprint = time.perf_counter() - fingerprint_start
        seg.text_features(parse_class_list("warm\nup", False), None, 0)  # other prompts
        sync(device)

        start = time.perf_counter()
        seg.text_features(classes, aux, 0.05)
        sync(device)
        first_use = time.perf_counter() - start

        start = time.perf_counter()
        seg.text_features(classes, aux, 0.05)
        memory_cached = time.perf_counter() - start

        fresh = make_segmenter(device, cache, args)
        start = time.perf_counter()
        fresh.text_features(classes, aux, 0.05)
        disk_cached = time.perf_counter() - start

        # Full 77-token encoding of a sample of the same prompts, scaled to all of them.
        prompts = [t(q) for q in classes.queries + aux for t in templates()]
        rng = np.random.default_rng(0)
        sample = rng.choice(len(prompts), max(1, int(len(prompts) * args.full_sample)), False)
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
        "full_length_sampled_fraction": args.full_sample,
        "speedup_vs_full_length": full_length / first_use,
        "cached_in_memory_s": memory_cached,
        "cached_on_disk_new_segmenter_s": disk_cached,
        "fingerprint_s": fingerprint,
        **peak_memory_mb(device),
    }


def naive_window_logits(seg, normalised, text, params, limit=None):
    """The same windows and encoder, one crop and one view at a time (the first `limit`
    windows only: a warm-up at the loop's shapes)."""
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
    dtype = seg.model.visual.conv1.weight.dtype  # float16 for a cast model
    for window in sliding_windows(h, w, params.crop, params.stride)[:limit]:
        crop = normalised[None, :, window.y0 : window.y1, window.x0 : window.x1]
        grid = tuple(
            s // p for s, p in zip(crop.shape[-2:], patch_size(seg.model.visual), strict=False)
        )
        with autocast(seg.device, seg.precision):
            tokens = torch.cat(
                [
                    encode_dense(seg.model.visual, view[None].to(dtype))
                    for view in crop_views(crop, params.image_engineering)
                ]
            )
        logits = views_to_grid_logits(tokens, text, grid, params.image_engineering, params.c_img)
        stitch_window(canvas, count, logits[0], window)
    return canvas / count


def scenario_segment(args) -> dict:
    import torch

    from napari_itaclip.engine import image as image_stage
    from napari_itaclip.engine.classes import parse_class_list
    from napari_itaclip.engine.presets import resolve_preset
    from napari_itaclip.engine.windows import N_VIEWS, sliding_windows

    device, options = args.device, run_options(args)
    seg = make_segmenter(device, False, args)
    image = test_image(375, 500)
    seg.segment(image, "voc21", preset="voc21", **options)  # warm-up, same shapes; text cached
    sync(device)
    result = seg.segment(image, "voc21", preset="voc21", **options)
    sync(device)
    params = resolve_preset("voc21", options)
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
    if args.skip_naive:
        return out
    classes = parse_class_list("voc21", True)
    with torch.inference_mode():
        text = seg.text_features(classes, None, 0)
        normalised = image_stage.normalise(image_stage.resize_short_side(image, params.short_side))[
            0
        ].to(seg.device)

        def batched():
            return seg.window_logits(normalised, text, params, lambda *a: None, lambda: None)

        def looped():
            return naive_window_logits(seg, normalised, text, params)

        naive_window_logits(seg, normalised, text, params, limit=1)  # warm-up, batch of 1
        # Shared machines drift: alternate the two, swapping the order every round, and
        # compare medians.
        times = {"batched": [], "naive": []}
        outputs = {}
        for round_ in range(args.rounds):
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


def scenario_precision(args) -> dict:
    """fp32 on the device against fp32 on the CPU; half precisions against fp32."""
    device, options = args.device, run_options(args)
    image = test_image(375, 500)

    def segment(on: str, precision: str):
        seg = make_segmenter(on, False, args, precision)
        seg.segment(image, "voc21", preset="voc21", **options)  # warm-up
        return seg.segment(image, "voc21", preset="voc21", **options)

    exact = segment(device, "fp32")
    out = {"image": [375, 500], "preset": "voc21"}
    if device != "cpu":
        cpu = segment("cpu", "fp32")
        out["fp32_max_abs_diff_vs_cpu"] = float(
            np.abs(exact.probabilities - cpu.probabilities).max()
        )
        out["fp32_label_agreement_vs_cpu"] = float((exact.labels == cpu.labels).mean())
    for half in ("fp16", "fp16-cast") if device != "cpu" else ("bf16",):
        result = segment(device, half)
        out[f"{half}_label_agreement_vs_fp32"] = float((result.labels == exact.labels).mean())
        difference = np.abs(result.probabilities - exact.probabilities).max()
        out[f"{half}_max_abs_diff_vs_fp32"] = float(difference)
        out[f"{half}_total_s"] = result.timings["total"]
    out["fp32_total_s"] = exact.timings["total"]
    return {**out, **peak_memory_mb(device)}


def scenario_throughput(args, preset: str) -> dict:
    """Different images one after the other through one segmenter (text cached)."""
    device, options = args.device, run_options(args)
    n = 4 if args.quick else THROUGHPUT_IMAGES
    images = [test_image(375, 500, shift=7 * i) for i in range(n)]
    seg = make_segmenter(device, False, args)
    seg.segment(images[-1], "voc21", preset=preset, **options)  # warm-up
    sync(device)
    start = time.perf_counter()
    for image in images:
        seg.segment(image, "voc21", preset=preset, **options)
    sync(device)
    elapsed = time.perf_counter() - start
    return {
        "images": n,
        "image": [375, 500],
        "preset": preset,
        "total_s": elapsed,
        "images_per_s": n / elapsed,
        **peak_memory_mb(device),
    }


def scenario_whole_run(args, shape: tuple[int, int], preset: str) -> dict:
    """One segment call on a fresh model, uncached text, for its peak memory and time."""
    seg = make_segmenter(args.device, False, args)
    start = time.perf_counter()
    result = seg.segment(test_image(*shape), preset, preset=preset, **run_options(args))
    return {
        "image": list(shape),
        "preset": preset,
        "classes": result.n_classes,
        "queries": len(result.parameters["classes"].replace("\n", ", ").split(", ")),
        "total_s": time.perf_counter() - start,
        "timings_s": result.timings,
        "band_memory_mb": seg.band_memory_mb,
        **peak_memory_mb(args.device),
    }


SCENARIOS = {
    "text": scenario_text,
    "segment": scenario_segment,
    "precision": scenario_precision,
    "throughput": lambda args: {
        preset: scenario_throughput(args, preset) for preset in ("fast", "voc21")
    },
    "memory": lambda args: scenario_whole_run(args, (480, 640), "coco_stuff"),
    "large": lambda args: scenario_whole_run(args, (3000, 4000), "voc21"),
}
CPU_SCENARIOS = ["text", "segment", "memory", "large"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: best present)")
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=None)
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
    parser.add_argument("--quick", action="store_true", help="tiny runs: check the script runs")
    parser.add_argument("--pretrained", help="open_clip tag or weights file (default: random)")
    parser.add_argument("--json", type=Path, help="write all results to this JSON file")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one scenario in-process
    args = parser.parse_args(argv)
    if args.device is None:
        from napari_itaclip.engine.models import available_devices

        args.device = available_devices()[0]
    if args.quick:
        args.rounds, args.full_sample = 1, min(args.full_sample, 0.01)
    if args.one:
        print(json.dumps(SCENARIOS[args.one](args)))
        return 0
    if args.scenarios is None:
        args.scenarios = CPU_SCENARIOS if args.device == "cpu" else list(SCENARIOS)
    results = {"machine": machine(args.device), "scenarios": {}}
    for name in args.scenarios:
        log(f"running {name} on {args.device} ...")
        cmd = [sys.executable, __file__, "--one", name, "--device", args.device]
        cmd += ["--full-sample", str(args.full_sample), "--rounds", str(args.rounds)]
        cmd += ["--skip-naive"] if args.skip_naive else []
        cmd += ["--quick"] if args.quick else []
        cmd += ["--pretrained", args.pretrained] if args.pretrained else []
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            log(proc.stderr[-3000:])
            results["scenarios"][name] = {"error": proc.stderr.strip().splitlines()[-1:]}
            continue
        results["scenarios"][name] = json.loads(proc.stdout.strip().splitlines()[-1])
        log(json.dumps(results["scenarios"][name], indent=2))
    results["targets"] = targets(results["scenarios"], args.device)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

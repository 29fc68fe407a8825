"""Annotation-loop benchmark: kept image features, the preview, and examples.

Full-size ViT-B/16 with random weights (the real cost; no download). On one 500x375 image with
the paper preset (voc21 parameters): the first run, a re-run with other classes whose text is
cached, a re-run with two new class names, a run with examples on the kept image, and the
time to the preview of a fresh run. Then the quality scenario: a mosaic of real textures from
scikit-image in irregular (Voronoi) regions, classes with meaningless names, a few short
strokes per region; pixel accuracy on the unpainted pixels with the text only and with the
strokes as examples, for both example methods and a few weights.

    python benchmarks/bench_annotation.py                  # both scenarios, CPU
    python benchmarks/bench_annotation.py --scenarios quality --json annotation.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import log, machine, test_image  # noqa: E402

CLASSES = ["background", "person", "cat", "dog", "car", "tree", "sky", "road", "building"]
OTHER_CLASSES = ["background", "person", "horse", "bicycle", "car", "tree", "sky", "road"]
TWO_NEW = ["background", "person", "cat", "dog", "car", "tree", "sky", "astronaut", "spacesuit"]
TEXTURES = ("brick", "grass", "gravel", "immunohistochemistry", "hubble_deep_field", "moon")
QUALITY_CLASSES = [f"class {chr(ord('a') + i)}" for i in range(len(TEXTURES))]
WEIGHTS = (1.0, 5.0, 20.0, 50.0)


def make_segmenter(device: str):
    import open_clip
    import torch

    from napari_itaclip import ITACLIP

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True)
    return ITACLIP.from_open_clip(model, device=device, cache_dir=False)


def timed_segment(seg, image, classes, **options) -> tuple[float, object]:
    start = time.perf_counter()
    result = seg.segment(image, classes, preset="voc21", **options)
    return time.perf_counter() - start, result


def scenario_speed(seg) -> dict:
    from napari_itaclip.engine import parse_class_list

    image = test_image(375, 500)
    for classes in (CLASSES, OTHER_CLASSES):  # text cached, so the runs below time the image
        seg.text_features(parse_class_list(classes, True), None, 0)
    first, result = timed_segment(seg, image, CLASSES)
    log(f"first run {first:.1f} s {result.timings}")
    other, rerun = timed_segment(seg, image, OTHER_CLASSES)
    new_names, renamed = timed_segment(seg, image, TWO_NEW)
    examples = np.full(image.shape[:2], -1)
    examples[300:310, 200:260] = 1  # a stroke on the astronaut: class "person"
    examples[20:30, 20:80] = 0
    with_examples, painted = timed_segment(seg, image, CLASSES, examples=examples)
    seg.clear_cache()
    preview_at = []
    start = time.perf_counter()
    seg.segment(
        image,
        CLASSES,
        preset="voc21",
        preview=lambda r: preview_at.append(time.perf_counter() - start),
    )
    full_with_preview = time.perf_counter() - start
    return {
        "first_run_s": first,
        "first_run_timings_s": result.timings,
        "rerun_other_classes_s": other,
        "rerun_other_classes_speedup": first / other,
        "rerun_features": rerun.parameters["image_features"],
        "rerun_two_new_names_s": new_names,
        "rerun_two_new_names_timings_s": renamed.timings,
        "examples_run_s": with_examples,
        "examples_run_speedup": first / with_examples,
        "examples_record": painted.parameters["examples"],
        "time_to_preview_s": preview_at[0],
        "full_run_with_preview_s": full_with_preview,
        "preview_fraction": preview_at[0] / full_with_preview,
    }


def texture(name: str, height: int, width: int) -> np.ndarray:
    from skimage import data

    from napari_itaclip.engine import to_rgb_uint8

    image = to_rgb_uint8(getattr(data, name)())
    reps = (-(-height // image.shape[0]), -(-width // image.shape[1]), 1)
    return np.tile(image, reps)[:height, :width]


def mosaic(height: int = 375, width: int = 500, cells: int = 12, seed: int = 0):
    """(image, truth, strokes): Voronoi cells, each a texture (cyclically), and two short
    horizontal strokes (3 x 25 pixels) well inside each cell."""
    import cv2

    rng = np.random.default_rng(seed)
    seeds = rng.uniform((0, 0), (height, width), (cells, 2))
    yy, xx = np.mgrid[0:height, 0:width]
    cell = np.argmin((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2, -1)
    truth = cell % len(TEXTURES)
    tiles = np.stack([texture(name, height, width) for name in TEXTURES])
    image = tiles[truth, yy, xx]
    strokes = np.full((height, width), -1)
    for index in range(cells):
        inside = cv2.distanceTransform((cell == index).astype(np.uint8), cv2.DIST_L2, 5)
        ys, xs = np.nonzero(inside > 16)
        for pick in rng.choice(len(ys), min(2, len(ys)), replace=False):
            y, x = ys[pick], xs[pick]
            strokes[y - 1 : y + 2, max(0, x - 12) : x + 13] = truth[y, x]
    return image, truth, strokes


def scenario_quality(seg) -> dict:
    image, truth, strokes = mosaic()
    unpainted = strokes < 0
    options = {"background": False}

    def accuracy(result) -> float:
        return float((result.labels == truth)[unpainted].mean())

    seconds, text_only = timed_segment(seg, image, QUALITY_CLASSES, **options)
    out = {
        "textures": list(TEXTURES),
        "painted_pixels": int((~unpainted).sum()),
        "first_run_s": seconds,
        "text_only": accuracy(text_only),
    }
    log(f"text only: {out['text_only']:.3f}")
    for prototypes in (True, False):
        method = "prototypes" if prototypes else "cache"
        for weight in WEIGHTS:
            seconds, result = timed_segment(
                seg,
                image,
                QUALITY_CLASSES,
                examples=strokes,
                examples_weight=weight,
                examples_prototypes=prototypes,
                **options,
            )
            out[f"{method}_weight_{weight:g}"] = accuracy(result)
            out[f"{method}_weight_{weight:g}_s"] = seconds
            log(f"{method} a={weight:g}: {accuracy(result):.3f} ({seconds:.1f} s)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scenarios", nargs="+", default=["speed", "quality"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    seg = make_segmenter(args.device)
    results = {"machine": machine(args.device)}
    scenarios = {"speed": scenario_speed, "quality": scenario_quality}
    for name in args.scenarios:
        log(f"scenario {name}")
        results[name] = scenarios[name](seg)
    text = json.dumps(results, indent=2, default=str)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()

"""In-process `segment_files` against the same run on a dask LocalCluster (docs/performance.md).

16 crops (500x375) of scikit-image's sample photos, the `fast` preset, full-size ViT-B/16 with
random weights (saved once as a state dict, so nothing is downloaded): the work of a real
model, not its answers. In-process uses torch's default threads; the cluster N worker
processes of one thread each, as `napari-itaclip segment --dask local:N` starts them. Both
runs start from an empty text-feature cache and include loading the model.

    python benchmarks/bench_cluster.py --images 16 --workers 2
    python benchmarks/bench_cluster.py --images 16 --workers 2 --stack   # one 16-plane stack
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

SAMPLES = ("astronaut", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")
CROP = (375, 500)  # height, width: a Pascal VOC image
CLASSES = "background; person; cat; dog; car; plant; sky"


def sample_crops(n: int) -> list[np.ndarray]:
    """n RGB crops of CROP taken across scikit-image's sample photos (upscaled when smaller)."""
    import cv2
    from skimage import data

    rng = np.random.default_rng(0)
    crops = []
    for i in range(n):
        image = getattr(data, SAMPLES[i % len(SAMPLES)])()[..., :3]
        scale = max(CROP[0] / image.shape[0], CROP[1] / image.shape[1], 1.0)
        if scale > 1:
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        top = rng.integers(0, image.shape[0] - CROP[0] + 1)
        left = rng.integers(0, image.shape[1] - CROP[1] + 1)
        crops.append(image[top : top + CROP[0], left : left + CROP[1]])
    return crops


def sample_images(folder: Path, n: int) -> list[Path]:
    """The crops as n PNG files."""
    from PIL import Image

    paths = [folder / f"crop{i:02}.png" for i in range(n)]
    for path, crop in zip(paths, sample_crops(n), strict=True):
        Image.fromarray(crop).save(path)
    return paths


def sample_stack(folder: Path, n: int) -> list[Path]:
    """The crops, in grey, as the n planes of one TIFF stack."""
    import cv2
    import tifffile

    planes = [cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY) for crop in sample_crops(n)]
    path = folder / "stack.tif"
    tifffile.imwrite(path, np.stack(planes), photometric="minisblack")
    return [path]


def random_vit_b16(path: Path) -> Path:
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True)
    torch.save(model.state_dict(), path)
    return path


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--stack", action="store_true", help="one TIFF stack of --images planes, as --format zarr"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    import torch

    from napari_itaclip.batch import SegmenterSpec, segment_files
    from napari_itaclip.cluster import dask_client
    from napari_itaclip.engine import prepare

    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    images = (sample_stack if args.stack else sample_images)(work, args.images)
    formats = {"formats": ["zarr"]} if args.stack else {}
    spec = SegmenterSpec("ViT-B-16", random_vit_b16(work / "vit-b16.pt"), device="cpu")
    request = prepare(CLASSES, preset="fast")

    os.environ["NAPARI_ITACLIP_CACHE"] = str(work / "cache-in-process")
    in_process = timed(
        lambda: segment_files(images, request, work / "a", segmenter=spec, **formats)
    )

    # Workers inherit the environment: a text cache of their own, empty too.
    os.environ["NAPARI_ITACLIP_CACHE"] = str(work / "cache-cluster")
    start = time.perf_counter()
    with dask_client(f"local:{args.workers}") as client:  # as `segment --dask local:N`
        cluster_start = time.perf_counter() - start
        on_cluster = timed(
            lambda: segment_files(
                images, request, work / "b", segmenter=spec, client=client, **formats
            )
        )
    same = all(
        np.array_equal(_labels(work / "a" / name), _labels(work / "b" / name))
        for name in sorted(os.listdir(work / "a"))
        if name.endswith(("_labels.png", "_labels.zarr"))
    )
    figures = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch_threads_in_process": torch.get_num_threads(),
        "images": f"{args.images} planes of one stack, --format zarr"
        if args.stack
        else args.images,
        "workers": args.workers,
        "in_process_s": round(in_process, 2),
        "cluster_start_s": round(cluster_start, 2),
        "cluster_s": round(on_cluster, 2),
        "in_process_per_image_s": round(in_process / args.images, 3),
        "cluster_per_image_s": round(on_cluster / args.images, 3),
        "overhead_per_image_s": round((on_cluster - in_process) / args.images, 3),
        "cluster_vs_in_process": f"{100 * (on_cluster / in_process - 1):+.1f}%",
        "same_labels": same,
    }
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


def _labels(path: Path) -> np.ndarray:
    if path.suffix == ".zarr":
        import zarr

        return zarr.open_array(path, mode="r")[...]
    from PIL import Image

    return np.asarray(Image.open(path))


if __name__ == "__main__":  # worker processes are spawned and import this file
    main()

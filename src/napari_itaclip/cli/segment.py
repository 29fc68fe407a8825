"""`napari-itaclip segment`: image files and folders through `batch.segment_files`."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from ..batch import DEFAULT_FORMATS, OUTPUT_FORMATS
from .options import positive_int

OPTION_GROUPS = ("common", "segmentation", "model")
HELP = "segment images and folders of images"
DESCRIPTION = (
    "Segment image files and folders (searched recursively). Writes, per image, a label image "
    "of class ids (class 0 = first class), the result bundle and an overlay. A TIFF or zarr "
    "stack is segmented plane by plane into one stacked result (--format zarr for big stacks). "
    "--dask runs on a dask.distributed cluster (docs/cli.md, 'Many images / on a cluster')."
)
DEFAULT_OUT = "itaclip-output"


def add_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="files or folders")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder (%(default)s)")
    parser.add_argument(
        "--format",
        action="append",
        choices=OUTPUT_FORMATS,
        dest="formats",
        help="png: palette PNG label image (TIFF for stacks and above 256 classes), tif: TIFF "
        "label image, bundle: the plugin's .itaclip file, zarr: zarr array of class ids, written "
        "plane by plane and resumable (use --format zarr alone for big stacks: TIFF and bundle "
        "hold a stack whole in memory); repeat for several (default: png and bundle)",
    )
    parser.add_argument("--no-overlay", action="store_true", help="do not write the overlay PNG")
    parser.add_argument(
        "--glob",
        metavar="PATTERN",
        help="file-name pattern for folders, e.g. '*.tif' (default: common image extensions)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument(
        "--dask",
        metavar="local:N|ADDRESS",
        type=dask_address,
        help="run on dask.distributed: local:N starts N worker processes here, an address "
        "(tcp://HOST:8786) uses a running scheduler; needs the `distributed` extra",
    )
    parser.add_argument(
        "--examples",
        metavar="BANK",
        type=Path,
        help="an examples bank (.npz from `napari-itaclip bank make`) applied to every image",
    )


def dask_address(text: str) -> str:
    """--dask's value: local:N (N checked here) or a scheduler address, passed on as is."""
    if text.startswith("local:"):
        positive_int(text.removeprefix("local:"))
    elif not text.strip():
        raise argparse.ArgumentTypeError("give local:N or a scheduler address")
    return text


def run(args) -> int:
    from ..batch import segment_files
    from ..io import PNG_MAX_CLASSES, check_output_folder, find_images
    from . import (
        EXIT_FAILURES,
        EXIT_OK,
        CommandLineError,
        checked,
        error,
        prepare_request,
        prepare_segmentation,
    )
    from .progress import TerminalProgress

    out = Path(args.out)
    formats = args.formats or DEFAULT_FORMATS
    images, problems = find_images(args.inputs, args.glob, out)
    for problem in problems:
        error(problem)
    if not images:
        error("no images found")
        return EXIT_FAILURES
    checked(check_output_folder, out)  # before the model loads
    if args.dask is None:
        setup = prepare_segmentation(args)
        request, segmenter = setup.request, setup.segmenter
        if request.examples is not None:  # a bank of another model: refused before any image
            checked(
                request.examples.class_ids_for, request.class_names, segmenter.image_fingerprint
            )
        cluster, setup_errors = contextlib.nullcontext(), ()
    else:  # each worker loads the model (and checks a bank) itself
        from ..batch import SegmenterSpec

        request, _ = prepare_request(args)
        try:
            from ..cluster import SetupError, dask_client
        except ImportError as exc:
            raise CommandLineError(
                f"--dask needs dask.distributed ({exc}): pip install 'napari-itaclip[distributed]'"
            ) from None
        segmenter = SegmenterSpec(
            args.model, args.pretrained, args.device, args.precision, args.batch_size
        )
        cluster, setup_errors = dask_client(args.dask), (SetupError,)
    n_classes = len(request.class_names)
    if "png" in formats and n_classes > PNG_MAX_CLASSES and not args.quiet:
        print(
            f"note: {n_classes} classes do not fit a palette PNG; label images are TIFFs",
            file=sys.stderr,
        )
    try:
        with (
            cluster as client,
            TerminalProgress(len(images), quiet=args.quiet, debug=args.debug) as progress,
        ):
            report = segment_files(
                images,
                request,
                out,
                segmenter=segmenter,
                formats=formats,
                overlay=not args.no_overlay,
                overwrite=args.overwrite,
                progress=progress,
                client=client,
            )
    except setup_errors as exc:  # the workers could not load the model or check the bank
        raise CommandLineError(str(exc)) from None
    skipped, failures = len(report.skipped), len(problems) + len(report.failed)
    hint = " (skipped images have all their outputs; --overwrite replaces them)" if skipped else ""
    print(
        f"{len(report.written)} segmented, {skipped} skipped, {failures} failed; outputs in "
        f"{out}{hint}"
    )
    return EXIT_FAILURES if failures else EXIT_OK

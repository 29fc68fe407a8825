"""`napari-itaclip segment`: image files and folders through `batch.segment_files`."""

from __future__ import annotations

import sys
from pathlib import Path

from ..batch import DEFAULT_FORMATS, OUTPUT_FORMATS

OPTION_GROUPS = ("common", "segmentation", "model")
HELP = "segment images and folders of images"
DESCRIPTION = (
    "Segment image files and folders (searched recursively). Writes, per image, a label image "
    "of class ids (class 0 = first class), the result bundle and an overlay. A TIFF stack is "
    "segmented plane by plane into one stacked result."
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
        "label image, bundle: the plugin's .itaclip.npz; repeat for several (default: png and "
        "bundle)",
    )
    parser.add_argument("--no-overlay", action="store_true", help="do not write the overlay PNG")
    parser.add_argument(
        "--glob",
        metavar="PATTERN",
        help="file-name pattern for folders, e.g. '*.tif' (default: common image extensions)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument(
        "--examples",
        metavar="BANK",
        type=Path,
        help="an examples bank (.npz from `napari-itaclip bank make`) applied to every image",
    )


def run(args) -> int:
    from ..batch import segment_files
    from ..io import PNG_MAX_CLASSES, check_output_folder, find_images
    from . import EXIT_FAILURES, EXIT_OK, checked, error, prepare_segmentation
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
    setup = prepare_segmentation(args)
    if setup.request.examples is not None:  # a bank of another model: refused before any image
        bank = setup.request.examples
        checked(bank.class_ids_for, setup.class_names, setup.segmenter.image_fingerprint)
    n_classes = len(setup.class_names)
    if "png" in formats and n_classes > PNG_MAX_CLASSES and not args.quiet:
        print(
            f"note: {n_classes} classes do not fit a palette PNG; label images are TIFFs",
            file=sys.stderr,
        )
    with TerminalProgress(len(images), quiet=args.quiet, debug=args.debug) as progress:
        report = segment_files(
            images,
            setup.request,
            out,
            segmenter=setup.segmenter,
            formats=formats,
            overlay=not args.no_overlay,
            overwrite=args.overwrite,
            progress=progress,
        )
    skipped, failures = len(report.skipped), len(problems) + len(report.failed)
    hint = " (skipped images have all their outputs; --overwrite replaces them)" if skipped else ""
    print(
        f"{len(report.written)} segmented, {skipped} skipped, {failures} failed; outputs in "
        f"{out}{hint}"
    )
    return EXIT_FAILURES if failures else EXIT_OK

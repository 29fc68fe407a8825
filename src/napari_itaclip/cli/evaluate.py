"""`napari-itaclip evaluate`: mIoU against ground truth through `evaluation.evaluate_dataset`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .options import positive_int

OPTION_GROUPS = ("common", "segmentation", "model")
HELP = "mIoU, per-class IoU and pixel accuracy against ground truth"
DESCRIPTION = (
    "Segment a folder of images and compare with ground-truth label images of class ids "
    "(docs/evaluation.md). Images and labels are matched by file name without the suffix."
)
DEFAULT_JSON = "itaclip-evaluation.json"


def add_arguments(parser) -> None:
    parser.add_argument(
        "--images", required=True, type=Path, metavar="DIR", help="image folder (recursive)"
    )
    parser.add_argument(
        "--labels",
        required=True,
        type=Path,
        metavar="DIR",
        help="ground-truth folder (recursive): label images of class ids",
    )
    parser.add_argument(
        "--list", type=Path, metavar="FILE", help="ids to evaluate, one per line (e.g. val.txt)"
    )
    parser.add_argument(
        "--image-suffix", metavar="SUFFIX", help="image names end with this (e.g. _leftImg8bit.png)"
    )
    parser.add_argument(
        "--label-suffix",
        metavar="SUFFIX",
        help="label names end with this (e.g. _labelTrainIds.png)",
    )
    parser.add_argument(
        "--ignore-index",
        type=int,
        default=255,
        metavar="ID",
        help="ground-truth id that is not counted (255)",
    )
    parser.add_argument(
        "--reduce-zero-label",
        action="store_true",
        help="ground truth 0 is ignored and k becomes k - 1 (Pascal Context 59)",
    )
    parser.add_argument("--limit", type=positive_int, metavar="N", help="first N images only")
    parser.add_argument(
        "--json",
        type=Path,
        default=Path(DEFAULT_JSON),
        metavar="FILE",
        help="where the metrics go (%(default)s)",
    )


def run(args) -> int:
    from ..evaluation import (
        Dataset,
        evaluate_dataset,
        evaluation_report,
        format_table,
        match_dataset,
        run_parameters,
    )
    from ..io import check_output_file, replacing
    from . import EXIT_FAILURES, EXIT_OK, checked, prepare_segmentation
    from .progress import TerminalProgress

    dataset = Dataset(
        images=args.images,
        labels=args.labels,
        id_list=args.list,
        image_suffix=args.image_suffix,
        label_suffix=args.label_suffix,
        ignore_index=args.ignore_index,
        reduce_zero_label=args.reduce_zero_label,
        limit=args.limit,
    )
    pairs, note = checked(match_dataset, dataset)
    if note and not args.quiet:
        print(f"note: {note}", file=sys.stderr)
    checked(check_output_file, args.json)  # before the model loads
    setup = prepare_segmentation(args)
    with TerminalProgress(len(pairs), quiet=args.quiet, debug=args.debug) as progress:
        evaluation = evaluate_dataset(
            pairs, setup.request, segmenter=setup.segmenter, dataset=dataset, progress=progress
        )
    parameters = run_parameters(
        setup.segmenter,
        setup.request,
        classes=args.classes,
        aux_text=args.aux_text,
        overrides=setup.overrides,
    )
    report = evaluation_report(
        evaluation, setup.class_names, dataset=dataset, parameters=parameters
    )
    print(format_table(report))
    with replacing(args.json) as temporary:
        temporary.write_text(json.dumps(report, indent=1, allow_nan=False), encoding="utf-8")
    print(f"metrics written to {args.json}")
    return EXIT_FAILURES if evaluation.failed or not evaluation.evaluated else EXIT_OK

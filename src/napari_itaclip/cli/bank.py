"""`napari-itaclip bank make`: strokes on a few images -> an examples bank for `segment`."""

from __future__ import annotations

from pathlib import Path

OPTION_GROUPS = ("common", "segmentation", "model")
HELP = "make an examples bank from images and their strokes"
DESCRIPTION = (
    "Turn strokes painted on a few images into an examples bank (.npz), which `segment "
    "--examples BANK` applies to other images (docs/method.md §10.3). A strokes image has the "
    "image's size and holds, per pixel, class id + 1 (1 = the first class of --classes) where "
    "the pixel is an example of that class, and 0 elsewhere."
)


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=["make"], help="make: build a bank")
    parser.add_argument("--images", nargs="+", required=True, type=Path, metavar="IMAGE")
    parser.add_argument(
        "--strokes",
        nargs="+",
        required=True,
        type=Path,
        metavar="STROKES",
        help="one strokes image per --images image, in the same order",
    )
    parser.add_argument("--out", required=True, type=Path, help="the bank file (.npz)")


def strokes_to_examples(strokes, n_classes: int):
    """Class ids (-1: none) from a strokes image of class id + 1 (0: none)."""
    if strokes.max(initial=0) > n_classes:
        raise ValueError(
            f"strokes hold value {int(strokes.max())} but there are {n_classes} classes "
            "(value = class id + 1)"
        )
    return strokes.astype("int64") - 1


def run(args) -> int:
    from ..io import check_output_file, read_image, read_label_image
    from . import EXIT_OK, CommandLineError, checked, prepare_segmentation

    def read(reader, path: Path):
        try:
            return reader(path)
        except (OSError, ValueError) as exc:
            raise CommandLineError(f"{path}: {exc}") from None

    if len(args.images) != len(args.strokes):
        raise CommandLineError(
            f"{len(args.images)} --images but {len(args.strokes)} --strokes: give one each"
        )
    checked(check_output_file, args.out)
    images = [read(read_image, path) for path in args.images]
    strokes = [read(read_label_image, path) for path in args.strokes]
    setup = prepare_segmentation(args)
    examples = [checked(strokes_to_examples, s, len(setup.class_names)) for s in strokes]
    bank = checked(setup.segmenter.examples_bank, images, examples, setup.request)
    path = bank.save(args.out)
    classes = len(set(bank.class_ids.tolist()))
    print(f"{len(bank.keys)} example keys of {classes} classes from {bank.images} images: {path}")
    return EXIT_OK

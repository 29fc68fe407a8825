"""Option groups shared by the commands, as argparse parent parsers (`option_groups`).

- "common": -q/--quiet, --debug (every command);
- "model": --model, --pretrained, --device, --precision, --batch-size;
- "segmentation": --classes, --preset, --aux-text and one option per entry of the parameter
  table `engine.PARAMETERS` (nothing here lists parameters by hand).

A command names the groups it takes in its OPTION_GROUPS.
"""

from __future__ import annotations

import argparse

from ..engine import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    PARAMETERS,
    PRECISIONS,
    PRESETS,
    WEIGHTS_ENV,
    Parameter,
)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def parameter_type(parameter: Parameter):
    """argparse `type` of a number or tuple parameter: parsed, then checked against its range."""

    expected = {int: "an integer", float: "a number", tuple: "comma-separated integers"}
    expected = expected[parameter.kind] + (' or "none"' if parameter.optional else "")

    def convert(text: str):
        if parameter.optional and text.strip().lower() == "none":
            return None
        try:
            if parameter.kind is tuple:
                value = tuple(int(part) for part in text.split(","))
            else:
                value = parameter.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        try:
            parameter.check(value)  # the range, named in the message
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    return convert


def add_parameter_options(group) -> None:
    """One option per `PARAMETERS` entry; an option left out keeps the preset's value."""
    for parameter in PARAMETERS.values():
        help = parameter.help.replace("%", "%%")
        if parameter.kind is bool:
            group.add_argument(
                parameter.option,
                dest=parameter.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=f"{help} (default: the preset's)",
            )
            continue
        bounds = f"{parameter.minimum:g} to {parameter.maximum:g}"
        group.add_argument(
            parameter.option,
            dest=parameter.name,
            type=parameter_type(parameter),
            default=argparse.SUPPRESS,
            metavar={int: "N", float: "X", tuple: "N,N"}[parameter.kind],
            help=f"{help} ({bounds}{', or none' if parameter.optional else ''}; default: the "
            "preset's)",
        )


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars or notes")
    common.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return common


def _model() -> argparse.ArgumentParser:
    model = argparse.ArgumentParser(add_help=False)
    group = model.add_argument_group("model")
    group.add_argument("--model", default=DEFAULT_MODEL, help="open_clip model name (%(default)s)")
    group.add_argument(
        "--pretrained",
        default=DEFAULT_PRETRAINED,
        metavar="NAME|FILE",
        help=f"open_clip pretrained tag or a local weights file (%(default)s; ${WEIGHTS_ENV} "
        "replaces the default weights)",
    )
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (auto)")
    group.add_argument(
        "--precision", default="auto", choices=PRECISIONS, help="auto: fp16 on CUDA, else fp32"
    )
    group.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="N",
        help="encoder images per chunk (128 on CUDA, else 16)",
    )
    return model


def _segmentation() -> argparse.ArgumentParser:
    segmentation = argparse.ArgumentParser(add_help=False)
    group = segmentation.add_argument_group("classes and parameters")
    group.add_argument(
        "--classes",
        required=True,
        metavar="CLASSES",
        help='class list file, an inline list ("; " between classes, ", " between names of one '
        "class) or a built-in set: voc21, context60, coco_object, coco_stuff, cityscapes",
    )
    group.add_argument(
        "--preset", default="voc21", choices=list(PRESETS), help="parameter preset (%(default)s)"
    )
    group.add_argument(
        "--aux-text", metavar="FILE", help="auxiliary text file of `name >=text` lines"
    )
    add_parameter_options(group)
    return segmentation


def option_groups() -> dict[str, argparse.ArgumentParser]:
    """The shared groups by name, as parent parsers for `add_parser(parents=...)`."""
    return {"common": _common(), "model": _model(), "segmentation": _segmentation()}

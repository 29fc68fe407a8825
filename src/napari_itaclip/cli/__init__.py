"""The `napari-itaclip` command line: segment, evaluate, info, cache, bank (docs/cli.md).

One module per command, each a few lines around library functions (`batch.segment_files`,
`evaluation.evaluate_dataset`, ...): `add_arguments(parser)` declares its options, `run(args)`
runs it. The option groups they share are in `options.py`. torch and open_clip are imported
inside the commands, so `--help` answers at once.

Exit codes: 0 all good; 1 some images failed (each is reported on one line and skipped);
2 the command could not start (argparse usage errors, a bad class list or parameter, an output
that cannot be written, a device that is not there, weights that cannot be loaded); 130
interrupted.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..batch import describe_error
from ..engine import PARAMETERS, Request

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CommandLineError(Exception):
    """A problem found before any image was processed; main() prints it and exits with 2."""


def build_parser() -> argparse.ArgumentParser:
    from . import bank, cache, evaluate, info, options, segment

    parser = argparse.ArgumentParser(
        prog="napari-itaclip",
        description="Training-free open-vocabulary semantic segmentation (ITACLIP).",
        epilog="Run `napari-itaclip COMMAND --help` for a command's options. Docs: docs/cli.md",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups = options.option_groups()
    for name, command in (
        ("segment", segment),
        ("evaluate", evaluate),
        ("info", info),
        ("cache", cache),
        ("bank", bank),
    ):
        sub = commands.add_parser(
            name,
            parents=[groups[group] for group in command.OPTION_GROUPS],
            help=command.HELP,
            description=command.DESCRIPTION,
        )
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: argparse's own codes
        return int(exc.code or 0)
    try:
        return args.run(args)
    except CommandLineError as exc:
        error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        error("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.debug:
            raise
        error(f"{describe_error(exc)} (run with --debug for the traceback)")
        return EXIT_FAILURES


def error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


# ------------------------------------------------------- what segment and evaluate share
@dataclass
class Segmentation:
    """The loaded model and the one checked request of a command."""

    segmenter: object
    request: Request
    overrides: dict  # the parameters given on the command line

    @property
    def class_names(self) -> list[str]:
        return self.request.class_names


def prepare_segmentation(args) -> Segmentation:
    """Check classes, auxiliary text and parameters as one request, then load the model once.

    The checks run first so that a typo fails in a second, not after loading the model.
    """
    request, overrides = prepare_request(args)
    return Segmentation(load_segmenter(args), request, overrides)


def prepare_request(args) -> tuple[Request, dict]:
    """The checked request of the options, and the parameters given on the command line."""
    from ..engine import prepare

    # Each parameter's option stores under its name, and only when given (see
    # options.add_parameter_options): these are the values that replace the preset's.
    overrides = {name: getattr(args, name) for name in PARAMETERS if hasattr(args, name)}
    classes = args.classes
    # A missing file would otherwise be read as one inline class named like the file.
    if classes.lower().endswith(".txt") and not Path(classes).is_file():
        raise CommandLineError(f"class list file not found: {classes}")
    aux_text = None if args.aux_text is None else Path(args.aux_text)
    try:
        examples = getattr(args, "examples", None)  # segment's --examples BANK
        request = prepare(
            classes, preset=args.preset, aux_text=aux_text, examples=examples, **overrides
        )
    except (ValueError, TypeError) as exc:
        raise CommandLineError(str(exc)) from None
    return request, overrides


def load_segmenter(args):
    """The `ITACLIP` of the model options (a bar on stderr while its weights download); a
    model that cannot be had is a CommandLineError."""
    from ..engine import ITACLIP, WeightsUnavailableError
    from .progress import DownloadBar

    try:
        with DownloadBar(quiet=args.quiet) as download:
            return ITACLIP.from_pretrained(
                args.model,
                args.pretrained,
                args.device,
                args.precision,
                batch_size=args.batch_size,
                progress=download,
            )
    except (ValueError, TypeError, WeightsUnavailableError) as exc:
        raise CommandLineError(str(exc)) from None


def checked(check, *arguments):
    """`check(*arguments)`, a library call made before any work; its ValueError (a sentence)
    becomes a CommandLineError."""
    try:
        return check(*arguments)
    except ValueError as exc:
        raise CommandLineError(str(exc)) from None

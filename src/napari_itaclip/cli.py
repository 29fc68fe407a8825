"""The `napari-itaclip` command line: segment, evaluate, info, cache (docs/cli.md).

Every command calls the same engine as the napari widget (`ITACLIP.segment`). torch and
open_clip are imported inside the commands, so `--help` answers at once.

Exit codes: 0 all good; 1 some images failed (each is reported on one line and skipped);
2 the command could not start (argparse usage errors, a bad class list or parameter, a device
that is not there, weights that cannot be loaded).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from . import __version__
from .engine.models import DEFAULT_MODEL, DEFAULT_PRETRAINED, PRECISIONS, WEIGHTS_ENV
from .engine.presets import PRESETS

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Files a folder scan picks up when no --glob is given (explicit file arguments are always read).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
TIFF_EXTENSIONS = (".tif", ".tiff")
OUTPUT_FORMATS = ("png", "tif", "bundle")
DEFAULT_FORMATS = ("png", "bundle")
DEFAULT_OUT = "itaclip-output"
DEFAULT_EVALUATION_JSON = "itaclip-evaluation.json"
# A palette PNG indexes at most 256 colours; label images with more classes are TIFFs.
PNG_MAX_CLASSES = 256
# Opacity of the class colours in the quick-look overlay, on a 0-255 scale.
OVERLAY_ALPHA = 128
# Key of the class names stored inside label PNGs (a text chunk) and TIFFs (the description).
LABEL_METADATA_KEY = "napari-itaclip"
# Preset fields the command line can override; their argparse `dest` is the field name.
OVERRIDES = ("short_side", "stride", "pamr_steps", "image_engineering", "background", "prob_thd")


class CommandLineError(Exception):
    """A problem found before any image was processed; main() prints it and exits with 2."""


# ---------------------------------------------------------------------------- arguments
def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-itaclip",
        description="Training-free open-vocabulary semantic segmentation (ITACLIP).",
        epilog="Run `napari-itaclip COMMAND --help` for a command's options. Docs: docs/cli.md",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars or notes")
    common.add_argument("--debug", action="store_true", help="show tracebacks of errors")

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
        type=_positive_int,
        metavar="N",
        help="encoder images per chunk (128 on CUDA, else 16)",
    )

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
    default = argparse.SUPPRESS  # an option left out keeps the preset's value
    group.add_argument(
        "--short-side",
        type=_positive_int,
        default=default,
        metavar="PIXELS",
        help="the image is resized so that its short side is this",
    )
    group.add_argument(
        "--stride", type=_positive_int, default=default, metavar="PIXELS", help="window step"
    )
    group.add_argument(
        "--pamr-steps",
        type=_non_negative_int,
        default=default,
        metavar="N",
        help="PAMR refinement iterations (0: off)",
    )
    group.add_argument(
        "--no-image-engineering",
        dest="image_engineering",
        action="store_false",
        default=default,
        help="one view per window instead of five",
    )
    group.add_argument(
        "--prob-thd",
        type=float,
        default=default,
        metavar="P",
        help="pixels whose best class probability is below P get class 0",
    )
    group.add_argument(
        "--background",
        action=argparse.BooleanOptionalAction,
        default=default,
        help="whether the first class holds background words (default: the preset's)",
    )

    segment = commands.add_parser(
        "segment",
        parents=[common, segmentation, model],
        help="segment images and folders of images",
        description="Segment image files and folders (searched recursively). Writes, per image, "
        "a label image of class ids (class 0 = first class), the result bundle and an overlay.",
    )
    segment.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="files or folders")
    segment.add_argument("--out", default=DEFAULT_OUT, help="output folder (%(default)s)")
    segment.add_argument(
        "--format",
        action="append",
        choices=OUTPUT_FORMATS,
        dest="formats",
        help="png: palette PNG label image (TIFF above 256 classes), tif: TIFF label image, "
        "bundle: the plugin's .itaclip.npz; repeat for several (default: png and bundle)",
    )
    segment.add_argument("--no-overlay", action="store_true", help="do not write the overlay PNG")
    segment.add_argument(
        "--glob",
        metavar="PATTERN",
        help="file-name pattern for folders, e.g. '*.tif' (default: common image extensions)",
    )
    segment.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    segment.set_defaults(run=run_segment)

    evaluate = commands.add_parser(
        "evaluate",
        parents=[common, segmentation, model],
        help="mIoU, per-class IoU and pixel accuracy against ground truth",
        description="Segment a folder of images and compare with ground-truth label images of "
        "class ids (docs/evaluation.md). Images and labels are matched by file name without "
        "the suffix.",
    )
    evaluate.add_argument(
        "--images", required=True, type=Path, metavar="DIR", help="image folder (recursive)"
    )
    evaluate.add_argument(
        "--labels",
        required=True,
        type=Path,
        metavar="DIR",
        help="ground-truth folder (recursive): label images of class ids",
    )
    evaluate.add_argument(
        "--list", type=Path, metavar="FILE", help="ids to evaluate, one per line (e.g. val.txt)"
    )
    evaluate.add_argument(
        "--image-suffix", metavar="SUFFIX", help="image names end with this (e.g. _leftImg8bit.png)"
    )
    evaluate.add_argument(
        "--label-suffix",
        metavar="SUFFIX",
        help="label names end with this (e.g. _labelTrainIds.png)",
    )
    evaluate.add_argument(
        "--ignore-index",
        type=int,
        default=255,
        metavar="ID",
        help="ground-truth id that is not counted (255)",
    )
    evaluate.add_argument(
        "--reduce-zero-label",
        action="store_true",
        help="ground truth 0 is ignored and k becomes k - 1 (Pascal Context 59)",
    )
    evaluate.add_argument("--limit", type=_positive_int, metavar="N", help="first N images only")
    evaluate.add_argument(
        "--json",
        type=Path,
        default=Path(DEFAULT_EVALUATION_JSON),
        metavar="FILE",
        help="where the metrics go (%(default)s)",
    )
    evaluate.set_defaults(run=run_evaluate)

    info = commands.add_parser(
        "info",
        parents=[common],
        help="versions, devices, cache folders, weights",
        description="Versions, available devices, cache folders and whether the default weights "
        "are cached.",
    )
    info.set_defaults(run=run_info)

    cache = commands.add_parser(
        "cache",
        parents=[common],
        help="show or clear the text-feature cache",
        description="Show the text-feature cache folder and its size; --clear empties it.",
    )
    cache.add_argument("--clear", action="store_true", help="delete the cached text features")
    cache.set_defaults(run=run_cache)
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
        _error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.debug:
            raise
        _error(f"{_describe(exc)} (run with --debug for the traceback)")
        return EXIT_FAILURES


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _describe(exc: BaseException) -> str:
    """One line for an exception; the engine's own errors already read as sentences."""
    if isinstance(exc, (ValueError, TypeError, OSError)):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


# ----------------------------------------------------------------------------- progress
class BatchProgress:
    """Two bars on stderr: images of the batch, and the current image's engine stage.

    Hidden with --quiet or when stderr is not a terminal; messages always get through.
    """

    def __init__(self, total: int, quiet: bool):
        from tqdm import tqdm

        hidden = quiet or not sys.stderr.isatty()
        self.images = tqdm(
            total=total, desc="images", unit="image", disable=hidden, position=0, file=sys.stderr
        )
        self.stage = tqdm(
            total=1, unit="step", disable=hidden, position=1, leave=False, file=sys.stderr
        )
        self._stage_name = None

    def engine(self, done: int, total: int, stage: str) -> None:
        """The engine's progress(done, total, stage) callback."""
        if stage != self._stage_name:
            self._stage_name = stage
            self.stage.reset(total=total)
            self.stage.set_description(stage)
        self.stage.update(done - self.stage.n)

    def start(self, name: str) -> None:
        self.images.set_postfix_str(name)

    def image_done(self) -> None:
        self._stage_name = None
        self.images.update(1)

    def write(self, message: str) -> None:
        self.images.write(message, file=sys.stderr)

    def failure(self, name, exc: Exception, debug: bool) -> str:
        """Report one failed image on one line (plus the traceback with --debug)."""
        message = _describe(exc)
        self.write(f"error: {name}: {message}")
        if debug:
            self.write(traceback.format_exc().rstrip())
        return message

    def close(self) -> None:
        self.stage.close()
        self.images.close()


@contextmanager
def batch_progress(total: int, quiet: bool):
    bars = BatchProgress(total, quiet)
    try:
        yield bars
    finally:
        bars.close()


# ------------------------------------------------------------------------------ engine
@dataclass
class Segmentation:
    """The loaded model and the checked classes and parameters of one command."""

    segmenter: object
    classes: list[str]
    class_names: list[str]
    preset: str
    aux_text: str | None
    overrides: dict

    def run(self, image: np.ndarray, progress):
        return self.segmenter.segment(
            image,
            self.classes,
            preset=self.preset,
            aux_text=self.aux_text,
            progress=progress,
            **self.overrides,
        )


def _read_option_file(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandLineError(f"cannot read the {what} file {path}: {exc}") from None


def prepare_segmentation(args) -> Segmentation:
    """Check classes, auxiliary text and parameters, then load the model once.

    The checks run first so that a typo fails in a second, not after loading the model.
    """
    from .engine.classes import parse_aux_text, parse_class_list
    from .engine.presets import resolve_preset

    overrides = {name: getattr(args, name) for name in OVERRIDES if hasattr(args, name)}
    classes = args.classes
    # A missing file would otherwise be read as one inline class named like the file.
    if classes.lower().endswith(".txt") and not Path(classes).is_file():
        raise CommandLineError(f"class list file not found: {classes}")
    aux_text = None if args.aux_text is None else _read_option_file(args.aux_text, "auxiliary text")
    try:
        params = resolve_preset(args.preset, overrides)
        class_list = parse_class_list(classes, params.background)
        if aux_text is not None:
            parse_aux_text(aux_text, class_list)
    except (ValueError, TypeError) as exc:
        raise CommandLineError(str(exc)) from None
    segmenter = load_segmenter(args)
    return Segmentation(
        segmenter=segmenter,
        classes=class_list.to_text().splitlines(),
        class_names=class_list.class_names,
        preset=args.preset,
        aux_text=aux_text,
        overrides=overrides,
    )


def load_segmenter(args):
    from .engine.models import WeightsUnavailableError
    from .engine.segmenter import ITACLIP

    try:
        return ITACLIP(
            model=args.model,
            pretrained=args.pretrained,
            device=args.device,
            precision=args.precision,
            batch_size=args.batch_size,
        )
    except (ValueError, TypeError, WeightsUnavailableError) as exc:
        raise CommandLineError(str(exc)) from None


# ------------------------------------------------------------------------------ reading
def read_image(path: Path) -> np.ndarray:
    """The pixels of an image file, RGB(A) order, dtype as stored (16-bit stays 16-bit).

    TIFF through tifffile, everything else through OpenCV. EXIF orientation is not applied, so
    labels line up with the stored pixels, as ground-truth files do.
    """
    if path.suffix.lower() in TIFF_EXTENSIONS:
        import tifffile

        try:
            image = tifffile.imread(path)
        except Exception as exc:  # tifffile raises several types for damaged files
            raise ValueError(f"cannot read TIFF: {exc}") from None
        # Leading length-1 axes (a single page or channel stored as a stack) carry nothing.
        while image.ndim > 2 and image.shape[0] == 1:
            image = image[0]
        return image
    import cv2

    image = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError("cannot decode the image (not an image, damaged, or an unknown format)")
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return image


def read_label_image(path: Path) -> np.ndarray:
    """A ground-truth label image as stored: palette indices or grey values, never colours."""
    if path.suffix.lower() in TIFF_EXTENSIONS:
        labels = read_image(path)
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                if image.mode not in ("P", "L", "I", "I;16", "I;16B"):
                    raise ValueError(
                        f"label image has mode {image.mode}; ground truth must be a palette or "
                        "greyscale image of class ids, not colours"
                    )
                labels = np.asarray(image)
        except UnidentifiedImageError:
            raise ValueError("cannot decode the label image") from None
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"label image must be 2D integer class ids, got shape {labels.shape} {labels.dtype}"
        )
    return labels


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def find_images(
    inputs: list[str], pattern: str | None, out_dir: Path
) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(image, sub-folder for its outputs) for every input, and one message per missing input.

    Folders are searched recursively for `pattern` (default: IMAGE_EXTENSIONS), skipping
    hidden files and anything under the output folder; outputs keep the sub-folder layout.
    """
    found: dict[Path, tuple[Path, Path]] = {}
    problems = []
    out_resolved = out_dir.resolve()
    for text in inputs:
        path = Path(text)
        if path.is_file():
            found.setdefault(path.resolve(), (path, Path()))
        elif path.is_dir():
            candidates = path.rglob(pattern) if pattern else path.rglob("*")
            for candidate in sorted(candidates):
                resolved = candidate.resolve()
                if (
                    not candidate.is_file()
                    or _is_hidden(candidate, path)
                    or out_resolved in resolved.parents
                    or (pattern is None and candidate.suffix.lower() not in IMAGE_EXTENSIONS)
                ):
                    continue
                found.setdefault(resolved, (candidate, candidate.parent.relative_to(path)))
        else:
            problems.append(f"{text}: no such file or folder")
    return list(found.values()), problems


# ------------------------------------------------------------------------------ writing
@contextmanager
def replacing(path: Path):
    """Yield a temporary name next to `path`, moved onto it when the block succeeds.

    An interrupted run then never leaves a truncated file that a re-run would skip.
    The temporary name keeps the full file name (suffixes matter to the writers) and is
    hidden, so folder scans ignore it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def class_palette(n_classes: int, background: bool) -> np.ndarray:
    """(n_classes, 3) uint8 colour of each class id: the colour its label id has in napari.

    napari shows class id + label offset (1 without a background class), so the PNG palette,
    the overlay and the napari layer give a class the same colour.
    """
    from .bundle import label_offset
    from .colors import class_colors_uint8

    offset = label_offset(background)
    return class_colors_uint8(n_classes + offset)[offset:]


def _label_metadata(result) -> dict:
    return {"class_names": list(result.class_names), "background": bool(result.background)}


def write_label_png(path: Path, result) -> None:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    image = Image.fromarray(result.labels.astype(np.uint8, copy=False))
    image.putpalette(class_palette(result.n_classes, result.background).ravel().tolist())
    info = PngInfo()
    info.add_text(LABEL_METADATA_KEY, json.dumps(_label_metadata(result)))
    image.save(path, pnginfo=info)


def write_label_tiff(path: Path, result) -> None:
    import tifffile

    tiff_metadata = {LABEL_METADATA_KEY: _label_metadata(result)}
    tifffile.imwrite(path, result.labels, compression="zlib", metadata=tiff_metadata)


def overlay_image(rgb: np.ndarray, labels: np.ndarray, palette: np.ndarray, background: bool):
    """uint8 RGB: the image with each pixel's class colour blended in; background left bare."""
    weight = np.full(len(palette), OVERLAY_ALPHA, np.uint16)
    if background:
        weight[0] = 0
    alpha = weight[labels][..., None]
    colour = palette[labels].astype(np.uint16)
    # uint16 is enough: 255 * (255 - a) + 255 * a <= 65025.
    blended = rgb.astype(np.uint16) * (255 - alpha) + colour * alpha + 127
    return (blended // 255).astype(np.uint8)


def write_overlay(path: Path, result, image: np.ndarray) -> None:
    from PIL import Image

    from .engine.image import to_rgb_uint8

    rgb = to_rgb_uint8(image)  # the pixels as the engine saw them
    palette = class_palette(result.n_classes, result.background)
    Image.fromarray(overlay_image(rgb, result.labels, palette, result.background)).save(path)


def planned_outputs(stem: Path, formats: set[str], n_classes: int, overlay: bool) -> dict:
    """{kind: path} of the files written for one image (`stem` = out folder / image stem)."""
    from .bundle import SUFFIX

    outputs = {}
    if "png" in formats:
        kind = "png" if n_classes <= PNG_MAX_CLASSES else "tif"
        outputs[kind] = stem.with_name(f"{stem.name}_labels.{kind}")
    if "tif" in formats:
        outputs["tif"] = stem.with_name(f"{stem.name}_labels.tif")
    if "bundle" in formats:
        outputs["bundle"] = stem.with_name(stem.name + SUFFIX)
    if overlay:
        outputs["overlay"] = stem.with_name(f"{stem.name}_overlay.png")
    return outputs


def write_outputs(outputs: dict, result, image: np.ndarray, source_name: str) -> None:
    from .bundle import save_bundle

    writers = {
        "png": lambda path: write_label_png(path, result),
        "tif": lambda path: write_label_tiff(path, result),
        "bundle": lambda path: save_bundle(path, result, name=source_name),
        "overlay": lambda path: write_overlay(path, result, image),
    }
    for kind, path in outputs.items():
        with replacing(path) as temporary:
            writers[kind](temporary)


# ------------------------------------------------------------------------------ segment
def run_segment(args) -> int:
    out_dir = Path(args.out)
    formats = set(args.formats or DEFAULT_FORMATS)
    images, problems = find_images(args.inputs, args.glob, out_dir)
    for problem in problems:
        _error(problem)
    if not images:
        _error("no images found")
        return EXIT_FAILURES
    setup = prepare_segmentation(args)
    n_classes = len(setup.class_names)
    if "png" in formats and n_classes > PNG_MAX_CLASSES and not args.quiet:
        print(
            f"note: {n_classes} classes do not fit a palette PNG; label images are TIFFs",
            file=sys.stderr,
        )

    done, skipped, failures, used = 0, 0, len(problems), {}
    with batch_progress(len(images), args.quiet) as bars:
        for path, sub_folder in images:
            stem = out_dir / sub_folder / path.stem
            outputs = planned_outputs(stem, formats, n_classes, not args.no_overlay)
            bars.start(path.name)
            try:
                if stem in used:
                    raise ValueError(f"its outputs would overwrite those of {used[stem]}")
                used[stem] = path
                if not args.overwrite:
                    outputs = {kind: p for kind, p in outputs.items() if not p.exists()}
                if not outputs:
                    skipped += 1
                    continue
                image = read_image(path)
                result = setup.run(image, bars.engine)
                write_outputs(outputs, result, image, path.name)
                done += 1
            except Exception as exc:
                bars.failure(path, exc, args.debug)
                failures += 1
            finally:
                bars.image_done()
    hint = " (skipped images have all their outputs; --overwrite replaces them)" if skipped else ""
    print(f"{done} segmented, {skipped} skipped, {failures} failed; outputs in {out_dir}{hint}")
    return EXIT_FAILURES if failures else EXIT_OK


# ----------------------------------------------------------------------------- evaluate
def index_files(root: Path, suffix: str | None) -> dict[str, Path]:
    """Files under `root` (recursive) by id: the name less `suffix`, or less its extension
    when no suffix is given (then only image extensions count)."""
    if not root.is_dir():
        raise CommandLineError(f"not a folder: {root}")
    files: dict[str, Path] = {}
    for path in sorted(root.rglob(f"*{suffix}" if suffix else "*")):
        if not path.is_file() or _is_hidden(path, root):
            continue
        if suffix:
            key = path.name[: -len(suffix)]
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            key = path.stem
        else:
            continue
        if key in files:
            raise CommandLineError(
                f"two files under {root} have the id {key!r}: {files[key]} and {path}; narrow the "
                "folder or give --image-suffix/--label-suffix"
            )
        files[key] = path
    return files


def match_dataset(args) -> tuple[list[tuple[str, Path | None, Path | None]], str | None]:
    """(id, image, label) to evaluate, in order, and a note on unmatched files.

    With --list, every listed id is evaluated and a missing file fails that id; without it,
    every id present in both folders is, sorted.
    """
    images = index_files(args.images, args.image_suffix)
    labels = index_files(args.labels, args.label_suffix)
    note = None
    if args.list is not None:
        ids = [line.strip() for line in _read_option_file(args.list, "id list").splitlines()]
        ids = [image_id for image_id in ids if image_id]
    else:
        ids = sorted(images.keys() & labels.keys())
        if not ids:
            raise CommandLineError(
                f"no image under {args.images} has a label under {args.labels} with the same "
                "id; check --image-suffix/--label-suffix (docs/evaluation.md)"
            )
        unmatched_images, unmatched_labels = len(images) - len(ids), len(labels) - len(ids)
        if unmatched_images or unmatched_labels:
            note = (
                f"{unmatched_images} images without a label and {unmatched_labels} labels without "
                "an image are not evaluated"
            )
    if args.limit is not None:
        ids = ids[: args.limit]
    return [(image_id, images.get(image_id), labels.get(image_id)) for image_id in ids], note


def evaluate_one(setup: Segmentation, image_path, label_path, args, progress) -> np.ndarray:
    """The confusion matrix of one image (labels are read and checked before segmenting)."""
    from .evaluation import confusion_matrix, reduce_zero_label

    if image_path is None or label_path is None:
        raise ValueError(f"no {'image' if image_path is None else 'label'} file with this id")
    truth = read_label_image(label_path)
    if args.reduce_zero_label:
        truth = reduce_zero_label(truth, args.ignore_index)
    image = read_image(image_path)
    if truth.shape != image.shape[:2]:
        raise ValueError(f"label size {truth.shape} differs from image size {image.shape[:2]}")
    result = setup.run(image, progress)
    return confusion_matrix(truth, result.labels, len(setup.class_names), args.ignore_index)


def _finite_or_none(value: float):
    return None if math.isnan(value) else float(value)


def evaluation_report(
    matrix: np.ndarray, setup: Segmentation, args, evaluated: int, failed: list
) -> dict:
    """Everything `evaluate` writes to JSON (fractions in [0, 1]; null for no IoU)."""
    from .evaluation import iou_per_class, mean_iou, pixel_accuracy

    iou = iou_per_class(matrix)
    segmenter = setup.segmenter
    return {
        "miou": _finite_or_none(mean_iou(matrix)),
        "pixel_accuracy": _finite_or_none(pixel_accuracy(matrix)),
        "classes": [
            {
                "id": class_id,
                "name": name,
                "iou": _finite_or_none(iou[class_id]),
                "ground_truth_pixels": int(matrix[class_id].sum()),
                "predicted_pixels": int(matrix[:, class_id].sum()),
            }
            for class_id, name in enumerate(setup.class_names)
        ],
        "images_evaluated": evaluated,
        "failed": failed,
        "dataset": {
            "images": str(args.images),
            "labels": str(args.labels),
            "list": None if args.list is None else str(args.list),
            "image_suffix": args.image_suffix,
            "label_suffix": args.label_suffix,
            "ignore_index": args.ignore_index,
            "reduce_zero_label": args.reduce_zero_label,
            "limit": args.limit,
        },
        "parameters": {
            "classes": args.classes,
            "aux_text": args.aux_text,
            "preset": setup.preset,
            "overrides": setup.overrides,
            "model": segmenter.model_identity,
            "device": str(segmenter.device),
            "precision": segmenter.precision,
            "napari_itaclip_version": __version__,
        },
        "confusion_matrix": matrix.tolist(),
    }


def format_table(report: dict) -> str:
    """The per-class table and the summary line, IoU in percent as papers print it."""
    width = max(len("class"), *(len(row["name"]) for row in report["classes"]))
    lines = [f"{'id':>5}  {'class':<{width}}  {'IoU %':>7}  {'GT pixels':>12}"]
    for row in report["classes"]:
        iou = "-" if row["iou"] is None else f"{100 * row['iou']:.2f}"
        lines.append(
            f"{row['id']:>5}  {row['name']:<{width}}  {iou:>7}  {row['ground_truth_pixels']:>12}"
        )
    miou, accuracy = report["miou"], report["pixel_accuracy"]
    counted = sum(row["iou"] is not None for row in report["classes"])
    lines.append(
        f"mIoU {'-' if miou is None else f'{100 * miou:.2f}'} over {counted} classes, "
        f"pixel accuracy {'-' if accuracy is None else f'{100 * accuracy:.2f}'}, "
        f"{report['images_evaluated']} images, {len(report['failed'])} failed"
    )
    return "\n".join(lines)


def run_evaluate(args) -> int:
    pairs, note = match_dataset(args)
    if note and not args.quiet:
        print(f"note: {note}", file=sys.stderr)
    setup = prepare_segmentation(args)
    n_classes = len(setup.class_names)
    matrix = np.zeros((n_classes, n_classes), np.int64)
    failed, evaluated = [], 0
    with batch_progress(len(pairs), args.quiet) as bars:
        for image_id, image_path, label_path in pairs:
            bars.start(image_id)
            try:
                matrix += evaluate_one(setup, image_path, label_path, args, bars.engine)
                evaluated += 1
            except Exception as exc:
                message = bars.failure(image_path or image_id, exc, args.debug)
                failed.append({"id": image_id, "error": message})
            finally:
                bars.image_done()
    report = evaluation_report(matrix, setup, args, evaluated, failed)
    print(format_table(report))
    with replacing(args.json) as temporary:
        temporary.write_text(json.dumps(report, indent=1, allow_nan=False), encoding="utf-8")
    print(f"metrics written to {args.json}")
    return EXIT_FAILURES if failed or not evaluated else EXIT_OK


# ------------------------------------------------------------------------ info and cache
def _human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    exponent = min(int(math.log(size, 1024)), 3)
    return f"{size / 1024**exponent:.1f} {('KB', 'MB', 'GB')[exponent - 1]}"


def default_weights_status() -> str:
    """Where the default ViT-B-16/openai weights would come from, without downloading."""
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        state = "present" if Path(env).is_file() else "MISSING"
        return f"${WEIGHTS_ENV} = {env} ({state})"
    from .engine.models import cached_weights_path

    cached = cached_weights_path(DEFAULT_MODEL, DEFAULT_PRETRAINED)
    if cached:
        return f"cached: {cached}"
    return "not cached: downloaded on first use (needs internet), or give --pretrained FILE"


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def run_info(args) -> int:
    import torch

    from .engine.models import available_devices
    from .engine.text import text_cache_folder, text_cache_usage

    packages = ("torch", "open_clip_torch", "numpy", "opencv-python-headless", "napari")
    print(f"napari-itaclip {__version__}")
    print(f"python {platform.python_version()} on {platform.platform()}")
    for name in packages:
        print(f"{name} {_package_version(name)}")
    devices = []
    for device in available_devices():
        if device == "cuda":
            names = {torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}
            device = f"cuda ({', '.join(sorted(names))})"
        devices.append(device)
    print(f"devices: {', '.join(devices)}")
    folder = text_cache_folder()
    entries, size = text_cache_usage()
    print(f"text-feature cache: {folder} ({entries} entries, {_human_size(size)})")
    print(f"weights {DEFAULT_MODEL}/{DEFAULT_PRETRAINED}: {default_weights_status()}")
    return EXIT_OK


def run_cache(args) -> int:
    from .engine.text import text_cache_folder, text_cache_usage

    # Only the engine's own sub-folder: $NAPARI_ITACLIP_CACHE may point at a folder holding
    # other things.
    folder = text_cache_folder()
    entries, size = text_cache_usage()
    if args.clear:
        shutil.rmtree(folder, ignore_errors=True)
        print(f"cleared {folder} ({entries} text-feature entries, {_human_size(size)})")
    else:
        print(f"{folder}: {entries} text-feature entries, {_human_size(size)}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

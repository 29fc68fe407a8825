"""`napari-itaclip cache`: show or clear the text-feature cache."""

from __future__ import annotations

import math
import shutil

OPTION_GROUPS = ("common",)
HELP = "show or clear the text-feature cache"
DESCRIPTION = "Show the text-feature cache folder and its size; --clear empties it."


def add_arguments(parser) -> None:
    parser.add_argument("--clear", action="store_true", help="delete the cached text features")


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    exponent = min(int(math.log(size, 1024)), 3)
    return f"{size / 1024**exponent:.1f} {('KB', 'MB', 'GB')[exponent - 1]}"


def run(args) -> int:
    from ..engine import text_cache_folder, text_cache_usage
    from . import EXIT_OK

    # Only the engine's own sub-folder: $NAPARI_ITACLIP_CACHE may point at a folder holding
    # other things.
    folder = text_cache_folder()
    entries, size = text_cache_usage()
    if args.clear:
        shutil.rmtree(folder, ignore_errors=True)
        print(f"cleared {folder} ({entries} text-feature entries, {human_size(size)})")
    else:
        print(f"{folder}: {entries} text-feature entries, {human_size(size)}")
    return EXIT_OK

"""Where the engine keeps its disk caches, answered without importing torch (the `info` and
`cache` commands read these and must answer at once)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "NAPARI_ITACLIP_CACHE"


def cache_root() -> Path:
    """The on-disk cache folder: $NAPARI_ITACLIP_CACHE, else the platform's user cache."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-itaclip"))


def text_cache_folder(root: Path | None = None) -> Path:
    """The folder holding all cached text features (one sub-folder per model)."""
    return (root or cache_root()) / "text"


def text_cache_usage(root: Path | None = None) -> tuple[int, int]:
    """(cached query features, bytes of every file) in the text-feature cache folder."""
    folder = text_cache_folder(root)
    entries = size = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file():
                size += path.stat().st_size
                entries += path.suffix == ".npy"
        except OSError:  # removed meanwhile by another process
            continue
    return entries, size

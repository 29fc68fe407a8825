"""One loaded segmenter per process, shared by the dock widget and the notebook API.

A model takes seconds to load and hundreds of MB to hold, so the faces ask
`get_segmenter(model, pretrained, device, precision)` instead of building an `ITACLIP` per
run: the same key returns the same segmenter; another key drops the old one before loading
the new one, so two are never in memory together. Thread-safe (the widget loads in a worker
thread while a notebook cell may ask too). No napari, no torch until a model is loaded.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from .engine import DEFAULT_MODEL, DEFAULT_PRETRAINED


def load_segmenter(
    model: str, pretrained, device: str = "auto", precision: str = "auto", *, progress=None
):
    """A new `ITACLIP` (what `get_segmenter` calls on a miss); progress(done_bytes,
    total_bytes, "download") while its weights download."""
    from .engine import import_without_pauses

    import_without_pauses()  # so a GUI keeps drawing while torch and open_clip load
    from .engine import ITACLIP

    return ITACLIP.from_pretrained(model, pretrained, device, precision, progress=progress)


class SegmenterCache:
    """Holds the one segmenter made last, with the loader and key that made it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._made_by: tuple | None = None  # (load, key)
        self._segmenter = None

    def get(
        self,
        key: tuple,
        load: Callable[..., Any],
        *,
        loading: Callable[[], None] | None = None,
        progress: Callable[[int, int, str], None] | None = None,
    ):
        """The segmenter `load(*key)` made, loading it only when the loader or key changed.

        loading: called just before a load (e.g. to say so in a progress bar). progress: given
        to `load` as `progress=` (the weights' download progress). A loader that raises leaves
        the cache empty; the next call tries again.
        """
        made_by = (load, tuple(key))
        with self._lock:
            if self._made_by != made_by:
                self._drop()
                if loading is not None:
                    loading()
                extra = {} if progress is None else {"progress": progress}
                self._segmenter = load(*key, **extra)
                self._made_by = made_by
            return self._segmenter

    def clear(self) -> None:
        """Forget the held segmenter (its memory is freed once no caller holds it)."""
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        held = self._segmenter is not None
        self._made_by = self._segmenter = None
        if held:
            gc.collect()  # module graphs hold reference cycles: free the weights now
            torch = sys.modules.get("torch")
            if torch is not None and torch.cuda.is_initialized():
                torch.cuda.empty_cache()


SEGMENTERS = SegmenterCache()


def get_segmenter(
    model: str = DEFAULT_MODEL,
    pretrained=DEFAULT_PRETRAINED,
    device: str = "auto",
    precision: str = "auto",
    *,
    loading: Callable[[], None] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
):
    """The shared `ITACLIP` for (model, pretrained tag or weights file, device, precision);
    loading and progress as for `SegmenterCache.get`."""
    pretrained = os.fspath(pretrained)  # a Path and its string are the same weights
    key = (model, pretrained, device, precision)
    return SEGMENTERS.get(key, load_segmenter, loading=loading, progress=progress)

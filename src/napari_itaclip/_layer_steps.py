"""Putting a result into layers one step per event-loop turn (`viewer.add_result_layers_in_steps`
is the generator of steps), so napari keeps drawing while layers are built."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from napari.utils.notifications import show_error
from qtpy.QtCore import QTimer

logger = logging.getLogger(__name__)


class LayerSteps:
    """Runs one generator of layer steps at a time; `busy` while it runs."""

    def __init__(self):
        self._steps: Iterator | None = None

    @property
    def busy(self) -> bool:
        return self._steps is not None

    def start(self, steps: Iterator, done: Callable[[], None]) -> None:
        """Run `steps`, then call done(). Steps still running (a preview's layers) are
        finished at once first, since the new steps update the layers they make."""
        if self._steps is not None:
            for _ in self._steps:
                pass
        self._steps = steps
        self._next(steps, done)

    def _next(self, steps: Iterator, done: Callable[[], None]) -> None:
        if self._steps is not steps:  # finished at once by the next start
            return
        try:
            next(steps)
        except StopIteration:
            self._steps = None
            done()
        except Exception as exc:  # a result that cannot become layers must not kill napari
            self._steps = None
            logger.exception("adding the result layers failed")
            show_error(f"ITACLIP: could not add the result layers: {exc}")
        else:
            QTimer.singleShot(0, lambda: self._next(steps, done))

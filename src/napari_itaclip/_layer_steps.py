"""Putting a result into layers one step per event-loop turn (`viewer.add_result_layers_in_steps`
is the generator of steps), so napari keeps drawing while layers are built; and the part of
building them that can be done before, in the worker (`prepare_layer_building`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from napari.utils.notifications import show_error
from qtpy.QtCore import QTimer

logger = logging.getLogger(__name__)


def prepare_layer_building() -> None:
    """Do in a worker thread what adding the first result layers would otherwise do on the GUI
    thread: napari builds a labels layer's features table with pandas, its colormap with
    skimage.color and its helpers with scipy.ndimage (~500 modules to import, 170 ms and
    more), and vispy computes its line
    dash patterns for the labels layer's polygon overlay (~90 ms of Python loops, cached for
    the process once computed)."""
    from .engine import import_without_pauses

    import_without_pauses("pandas", "skimage.color.colorconv", "scipy.ndimage")
    try:
        from vispy.visuals.line.dash_atlas import DashAtlas
    except ImportError:  # moved in another vispy: the GUI thread computes them, as before
        return
    DashAtlas()


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

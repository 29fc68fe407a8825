"""The dock widget's run section: Run/Cancel, which probability to show, one progress bar for
the whole run and its stage line (`_run_progress.RunProgress` decides what they say), and how
a failed run is reported."""

from __future__ import annotations

import logging
import time

from magicgui.widgets import CheckBox, ComboBox, Container, Label, ProgressBar, PushButton
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QSizePolicy
from superqt.utils import ensure_main_thread

from ._run_progress import PROGRESS_STEPS, RunProgress
from .engine import Cancelled, WeightsUnavailableError

logger = logging.getLogger(__name__)

NO_PROBABILITY = "none"
PROGRESS_INTERVAL = 0.25
RUN_TOOLTIP = "Segment the image into the classes with these parameters"
# What matters first: a notification shows its first ~45 characters until expanded.
OFFLINE = (
    "ITACLIP offline: set Model > weights file, or connect once (the model weights are "
    "not downloaded yet)"
)


class RunPanel:
    """Run and Cancel, "show probability of", the bar, the stage line and the last run's time.

    `show_progress` and `show_loading` may be called from the worker thread.
    """

    def __init__(self):
        self.progress_state = RunProgress()
        self._last_progress = (0.0, "")  # (time, stage) of the last progress shown
        self._class_names: list[str] = []
        self.run_button = PushButton(text="Run", tooltip=RUN_TOOLTIP)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.show_probability = ComboBox(
            label="show probability of", choices=self._probability_choices,
            tooltip="The class whose probability layer is shown; the others stay hidden",
        )  # fmt: skip
        self.preview = CheckBox(
            text="preview", value=True,
            tooltip="Show a coarse result in the layers as soon as it exists (a fraction of "
            "the run's encoder work); the result replaces it",
        )  # fmt: skip
        self.progress = ProgressBar(value=0, min=0, max=PROGRESS_STEPS, label="progress")
        # Never empty, and ignoring their text width: changing text must not resize the dock,
        # since a resize redraws the whole canvas (the main cost to the GUI during a run).
        self.stage = Label(value=self.progress_state.text)
        self.last_run = Label(value="last run: none yet")
        for label in (self.stage, self.last_run):
            label.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        buttons = Container(
            widgets=[self.run_button, self.cancel_button, self.preview],
            layout="horizontal",
            labels=False,
        )
        self.container = Container(
            widgets=[buttons, self.show_probability, self.progress, self.stage, self.last_run]
        )

    @property
    def shown_probability(self) -> str | None:
        """The class whose probability layer a run shows (None: none)."""
        value = self.show_probability.value
        return None if value == NO_PROBABILITY else value

    def _probability_choices(self, _widget) -> list[str]:
        # A function, so that napari's reset_choices (on layer events) keeps the class names.
        return [NO_PROBABILITY, *self._class_names]

    def offer_classes(self, names) -> None:
        """Offer the class list's names in "show probability of" (the choice stays while it
        is still one of them, else it becomes none)."""
        self._class_names = list(names)
        self.show_probability.reset_choices()

    def show_problem(self, problem: str) -> None:
        self.run_button.tooltip = problem or RUN_TOOLTIP

    # --------------------------------------------------------------- a run's progress
    def started(self) -> None:
        self.cancel_button.enabled = True
        self.progress_state.start()
        self._show()

    def cancelling(self) -> None:
        """Cancel disables at once; the line says "cancelling..." until `finished`."""
        self.cancel_button.enabled = False
        self.progress_state.cancel()
        self._show()

    def finished(self) -> None:
        self.cancel_button.enabled = False
        self.progress_state.finish()
        self._show()

    def preview_shown(self) -> None:
        """The result layers show the preview until the run ends: the line says so."""
        self.progress_state.preview_shown()
        self._show()

    def ran(self, seconds: float, planes: int, reused: bool) -> None:
        notes = [f"{planes} planes"] * (planes > 1) + ["features reused"] * reused
        suffix = f" ({', '.join(notes)})" if notes else ""
        self.last_run.value = f"last run: {seconds:.1f} s{suffix}"

    def refined(self, seconds: float, changed: int, reused: bool) -> None:
        reuse = ", features reused" if reused else ""
        self.last_run.value = f"last run: refined, {changed} pixels changed, {seconds:.1f} s{reuse}"

    def cancelled_after_preview(self) -> None:
        self.last_run.value = "last run: cancelled; the layers show its PREVIEW"

    @ensure_main_thread
    def show_loading(self, model: str, pretrained: str) -> None:
        self.progress_state.loading(model, pretrained)
        self._show()

    @ensure_main_thread
    def show_progress(self, done: int, total: int, stage: str) -> None:
        # Every repaint recomposes the whole window (the canvas is an OpenGL widget), which is
        # slow with software OpenGL: within a stage, show one update per PROGRESS_INTERVAL s
        # (and a stage's last one).
        now = time.perf_counter()
        last_time, last_stage = self._last_progress
        if stage == last_stage and now - last_time < PROGRESS_INTERVAL and done < total:
            return
        self._last_progress = (now, stage)
        self.progress_state.update(done, total, stage)
        self._show()

    def _show(self) -> None:
        self.progress.value = round(self.progress_state.fraction * PROGRESS_STEPS)
        self.stage.value = self.progress_state.text


def report_failure(exc: BaseException, open_model_section) -> None:
    """A one-line notification for a failed run. Expected failures (cancel, missing weights,
    bad input) are logged without a traceback; missing weights open the Model section, where
    the weights file is chosen, and the log keeps the full explanation."""
    if isinstance(exc, Cancelled):
        logger.info("ITACLIP run cancelled")
        show_info("ITACLIP: run cancelled; no layer was added.")
    elif isinstance(exc, WeightsUnavailableError):
        logger.warning("ITACLIP: %s", exc)
        open_model_section()
        show_error(OFFLINE)
    elif isinstance(exc, ValueError | TypeError):
        logger.warning("ITACLIP: %s", exc)
        show_error(f"ITACLIP: {exc}")
    else:
        logger.error("ITACLIP run failed", exc_info=exc)
        show_error(f"ITACLIP failed ({type(exc).__name__}): {exc}")

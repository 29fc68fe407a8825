"""What the dock widget's progress bar and stage line say during a run (no Qt here).

The engine reports progress(done, total, stage) per stage ("download" while weights download,
then "text", "preview" (the preview's windows), "encoder", "refine"); `planes.segment_planes`
prefixes "plane k/n: " on stacks. Once the result layers show the run's preview the line
starts with "preview shown · ".
`RunProgress` turns these events into one fraction for the whole run (planes x weighted
stages, so a 3-plane stack reads 1/3 when its first plane is done) and one short line of
text. It never goes back within a phase, and after `cancel` it ignores the events still on
their way from the worker: the line says "cancelling..." until the run stops.
`ActivityBar` shows a `RunProgress` in napari's activity dock (`api.segment_layer`'s bar),
where its Cancel button stops the run.
"""

from __future__ import annotations

import os
import re

READY = "ready"
CANCELLING = "cancelling..."
# Each stage's share of one plane's bar: the encoder is most of a run's time (its preview
# windows first, when the run makes a preview).
STAGE_SPANS = {
    "text": (0.0, 0.05),
    "preview": (0.05, 0.1),
    "encoder": (0.05, 0.85),
    "refine": (0.85, 1.0),
}
PREVIEW_SHOWN = "preview shown · "
PLANE_STAGE = re.compile(r"plane (\d+)/(\d+): (.*)")
MB = 1024 * 1024
PROGRESS_STEPS = 1000  # a bar's resolution


def weights_name(pretrained) -> str:
    """A pretrained tag as it is, a weights file by its file name (paths are too long to show)."""
    text = os.fspath(pretrained)
    return os.path.basename(text) if os.sep in text else text


def download_text(done_bytes: int, total_bytes: int) -> str:
    if total_bytes <= 0:
        return f"downloading weights: {done_bytes / MB:.0f} MB"
    percent = 100 * done_bytes / total_bytes
    return (
        f"downloading weights: {done_bytes / MB:.0f} / {total_bytes / MB:.0f} MB ({percent:.0f}%)"
    )


class RunProgress:
    """The bar's fraction (0-1) and the stage line of the run in progress."""

    def __init__(self):
        self.fraction = 0.0
        self.text = READY
        self.cancelling = False
        self.previewed = False  # the result layers show the run's preview
        self._phase = None  # "download" or "run": the bar restarts from 0 between them

    def start(self) -> None:
        self.fraction, self.text, self.cancelling, self._phase = 0.0, "starting", False, None
        self.previewed = False

    def preview_shown(self) -> None:
        self.previewed = True
        if not self.cancelling:
            self.text = PREVIEW_SHOWN + self.text

    def loading(self, model: str, pretrained) -> None:
        if not self.cancelling:
            self.text = f"loading model {model} ({weights_name(pretrained)})"

    def cancel(self) -> None:
        self.cancelling = True
        self.text = CANCELLING

    def finish(self) -> None:
        self.fraction, self.text, self.cancelling, self._phase = 0.0, READY, False, None

    def update(self, done: int, total: int, stage: str) -> None:
        """Take one progress event (ignored after `cancel`)."""
        if self.cancelling:
            return
        part = min(done / total, 1.0) if total > 0 else 0.0
        if stage == "download":
            self._advance("download", part)
            self.text = download_text(done, total)
            return
        plane, planes, name = 1, 1, stage
        match = PLANE_STAGE.fullmatch(stage)
        if match:
            plane, planes, name = int(match[1]), int(match[2]), match[3]
        low, high = STAGE_SPANS.get(name, (0.0, 0.0))
        # An unknown stage keeps the bar where it is (the floor below).
        within = low + (high - low) * part if name in STAGE_SPANS else 0.0
        self._advance("run", (plane - 1 + within) / planes)
        counts = f" {done}/{total}" if total > 1 else ""
        where = f"plane {plane}/{planes}: " if match else ""
        self.text = f"{PREVIEW_SHOWN * self.previewed}{where}{name}{counts}"

    def _advance(self, phase: str, fraction: float) -> None:
        floor = self.fraction if phase == self._phase else 0.0
        self._phase = phase
        self.fraction = max(floor, min(fraction, 1.0))


BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}"


def cancelable_napari_progress(total: int, desc: str, on_cancel):
    """A napari progress bar whose Cancel button in the activity dock calls on_cancel() (napari
    shows the button for its `cancelable_progress`, which on its own only sets a flag)."""
    from napari.utils.progress import cancelable_progress

    class CancelableProgress(cancelable_progress):
        def cancel(self) -> None:
            super().cancel()
            on_cancel()

    # napari's dock shows what follows the last "|" beside the bar: the times alone, so that the
    # row (description, bar, times, Cancel) fits the dock; tqdm's default adds "50/1000" and
    # a rate, counts of the bar's internal steps that push Cancel out of sight.
    return CancelableProgress(total=total, desc=desc, bar_format=BAR_FORMAT)


class ActivityBar:
    """A run's bar in napari's activity dock (tqdm on the terminal without a viewer): the
    fraction and text of a `RunProgress`, one bar over planes x stages.

    Call it as the engine's progress(done, total, stage); `cancelled` is the engine's cancel
    check. Its Cancel button (or `cancel()`) makes the text "cancelling..." until `close()`,
    which removes the bar from the dock.
    """

    def __init__(self):
        self.state = RunProgress()
        self.state.start()
        self._text = self.state.text
        self.bar = cancelable_napari_progress(PROGRESS_STEPS, self._text, self.cancel)

    def __call__(self, done: int, total: int, stage: str) -> None:
        self.state.update(done, total, stage)
        self._show()

    def loading(self, model: str, pretrained) -> None:
        self.state.loading(model, pretrained)
        self._show()

    def cancel(self) -> None:
        self.state.cancel()
        self._show()

    def cancelled(self) -> bool:
        return self.state.cancelling

    def close(self) -> None:
        self.bar.close()

    def _show(self) -> None:
        # napari redraws the dock on every value and description event: only on changes
        value = round(self.state.fraction * PROGRESS_STEPS)
        if value != self.bar.n:
            self.bar.update(value - self.bar.n)
        if self.state.text != self._text:
            self._text = self.state.text
            self.bar.set_description(self._text)

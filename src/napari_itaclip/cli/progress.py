"""Progress on the terminal: the `batch.BatchProgress` that the segment and evaluate commands
give to the library loops, and the weights' download bar of every command that loads the
model."""

from __future__ import annotations

import sys
import traceback

from ..batch import BatchProgress, describe_error


class TerminalProgress(BatchProgress):
    """Two bars on stderr: images of the batch, and the current image's engine stage.

    Hidden with --quiet or when stderr is not a terminal; error lines always get through,
    notes unless --quiet. Use it as a context manager (the bars are closed on the way out).
    """

    def __init__(self, total: int, *, quiet: bool, debug: bool):
        from tqdm import tqdm

        hidden = quiet or not sys.stderr.isatty()
        self.quiet, self.debug = quiet, debug
        self.images = tqdm(
            total=total, desc="images", unit="image", disable=hidden, position=0, file=sys.stderr
        )
        self.stage = tqdm(
            total=1, unit="step", disable=hidden, position=1, leave=False, file=sys.stderr
        )
        self._stage_name = None

    def __enter__(self) -> TerminalProgress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stage.close()
        self.images.close()

    def start(self, name: str) -> None:
        self.images.set_postfix_str(name)

    def engine(self, done: int, total: int, stage: str) -> None:
        if stage != self._stage_name:
            self._stage_name = stage
            self.stage.reset(total=total)
            self.stage.set_description(stage)
        self.stage.update(done - self.stage.n)

    def note(self, message: str) -> None:
        if not self.quiet:
            self.write(f"note: {message}")

    def failure(self, path, exc: Exception) -> None:
        """One line per failed image (plus the traceback with --debug)."""
        self.write(f"error: {path}: {describe_error(exc)}")
        if self.debug:
            self.write("".join(traceback.format_exception(exc)).rstrip())

    def image_done(self) -> None:
        self._stage_name = None
        self.images.update(1)

    def write(self, message: str) -> None:
        self.images.write(message, file=sys.stderr)


class DownloadBar:
    """A bytes bar on stderr while the pretrained weights download: the engine's download
    hook, progress(done_bytes, total_bytes, "download") (`ITACLIP.from_pretrained`).

    Drawn from the first byte reported, so cached weights draw nothing; hidden like
    `TerminalProgress`. Use it as a context manager (the bar is closed on the way out).
    """

    def __init__(self, *, quiet: bool):
        self.hidden = quiet or not sys.stderr.isatty()
        self.bar = None

    def __enter__(self) -> DownloadBar:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.bar is not None:
            self.bar.close()

    def __call__(self, done: int, total: int, stage: str) -> None:
        if self.bar is not None and done < self.bar.n:  # open_clip fetches another file
            self.bar.close()
            self.bar = None
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total or None,
                desc="downloading weights",
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                disable=self.hidden,
                file=sys.stderr,
            )
        self.bar.update(done - self.bar.n)

"""RunProgress: one bar for the whole run (planes x weighted stages), text that fits, and no
event after Cancel; ActivityBar shows it as a napari progress bar (no viewer needed here)."""

import re

import pytest

from napari_itaclip._run_progress import (
    STAGE_SPANS,
    ActivityBar,
    RunProgress,
    download_text,
    weights_name,
)


def test_stack_fraction_is_plane_plus_weighted_stage_over_planes():
    progress = RunProgress()
    progress.start()
    progress.update(10, 10, "plane 1/3: refine")  # plane 1 done: a third, not 100%
    assert progress.fraction == pytest.approx(1 / 3)
    progress.update(5, 10, "plane 2/3: encoder")
    low, high = STAGE_SPANS["encoder"]
    assert progress.fraction == pytest.approx((1 + low + (high - low) * 0.5) / 3)
    assert progress.text == "plane 2/3: encoder 5/10"


def test_bar_never_goes_back_within_a_run_and_restarts_after_the_download():
    progress = RunProgress()
    progress.start()
    progress.update(600, 600, "download")
    assert progress.fraction == 1.0
    progress.update(1, 4, "text")  # the run's own bar starts again from 0
    assert progress.fraction == pytest.approx(0.05 / 4)
    progress.update(8, 10, "encoder")
    progress.update(1, 1, "something new")  # unknown stage: the bar stays
    assert progress.fraction == pytest.approx(0.05 + 0.8 * 0.8)


def test_late_events_after_cancel_are_ignored():
    progress = RunProgress()
    progress.start()
    progress.update(3, 25, "encoder")
    progress.cancel()
    progress.update(9, 25, "encoder")
    progress.loading("ViT-B-16", "openai")
    assert progress.text == "cancelling..."
    progress.finish()
    assert (progress.fraction, progress.text) == (0.0, "ready")


def test_texts_fit():
    assert weights_name("/very/long/folder/oracle_tiny_clip.pt") == "oracle_tiny_clip.pt"
    assert weights_name("laion2b_s34b_b88k") == "laion2b_s34b_b88k"
    assert download_text(150 * 2**20, 600 * 2**20) == "downloading weights: 150 / 600 MB (25%)"
    assert download_text(5 * 2**20, 0) == "downloading weights: 5 MB"


def test_activity_bar_is_one_run_progress_and_its_cancel_button_says_cancelling():
    from napari.utils.progress import cancelable_progress, progress

    bar = ActivityBar()
    assert isinstance(bar.bar, cancelable_progress)  # napari shows a Cancel button for it
    described = []
    bar.bar.events.description.connect(lambda event: described.append(event.value))
    bar(1, 2, "plane 1/2: refine")
    assert bar.bar.n == round(1000 * (0.85 + 0.15 / 2) / 2)
    assert described[-1] == "plane 1/2: refine 1/2"
    # Beside the bar the dock shows the text after the last "|": times only, no "462/1000"
    # of the bar's internal steps nor a rate, so that the Cancel button stays in sight.
    beside = str(bar.bar).split("|")[-1]
    assert re.fullmatch(r" \d\d:\d\d<(\d\d:\d\d|\?)", beside), beside
    assert not bar.cancelled()
    bar.bar.cancel()  # what the dock's Cancel button calls
    assert bar.cancelled() and described[-1] == "cancelling..."
    bar(2, 2, "plane 1/2: refine")  # an event already on its way
    assert described[-1] == "cancelling..."
    bar.close()
    assert bar.bar not in progress._all_instances  # napari's dock removes the bar

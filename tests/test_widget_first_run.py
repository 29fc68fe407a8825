"""The dock widget on a first run: download progress, the offline message, progress that tells
the truth, one background rule, and what a re-run shows (issue 10). Tiny model, Xvfb."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import napari_itaclip._run_panel as run_panel_module
import test_widget
from napari_itaclip._controls import CUSTOM, DEFAULT_PRESET
from napari_itaclip._run_panel import OFFLINE
from napari_itaclip._widget import DEFAULT_CLASSES, SegmentationWidget
from napari_itaclip.engine import PRESETS, WeightsUnavailableError, prepare
from test_widget import RUN_TIMEOUT_MS, run_and_wait, slow_run_settings

# The widget tests' fixtures, shared.
notifications = test_widget.notifications
settings_file = test_widget.settings_file
single_torch_thread = test_widget.single_torch_thread
viewer_widget = test_widget.viewer_widget

pytestmark = pytest.mark.gui
MB = 1024 * 1024


def shown_progress(widget):
    """(bar value, stage line) after every progress display from now on."""
    shown = []
    show = widget.run_panel._show

    def record():
        show()
        shown.append((widget.progress.value, widget.stage.value))

    widget.run_panel._show = record
    return shown


# ------------------------------------------------------------------ download and offline
def test_first_run_shows_download_progress(viewer_widget, qtbot, monkeypatch):
    viewer, widget = viewer_widget
    monkeypatch.setattr(run_panel_module, "PROGRESS_INTERVAL", 0)  # show every event
    inner = widget.segmenter_factory

    def downloading_factory(*key, progress=None):
        for done in (0, 150 * MB, 300 * MB, 600 * MB):
            progress(done, 600 * MB, "download")
        return inner(*key)

    widget.segmenter_factory = downloading_factory
    shown = shown_progress(widget)
    run_and_wait(qtbot, widget)
    # the bar follows the download, then the run
    assert (500, "downloading weights: 300 / 600 MB (50%)") in shown
    assert (1000, "downloading weights: 600 / 600 MB (100%)") in shown
    assert shown[-1] == (0, "ready")
    assert "photo labels" in viewer.layers


def test_offline_without_weights_is_one_line_and_opens_the_model_section(
    viewer_widget, qtbot, notifications, caplog
):
    viewer, widget = viewer_widget
    detail = (
        "could not load the pretrained weights 'ViT-B-16' / 'openai': they are not in the "
        "open_clip cache and downloading them failed. Fix: ... NAPARI_ITACLIP_WEIGHTS=..."
    )

    def offline_factory(*key, progress=None):
        raise WeightsUnavailableError(detail)

    widget.segmenter_factory = offline_factory
    assert not widget.sections["Model"].isExpanded()
    with caplog.at_level(logging.INFO):
        run_and_wait(qtbot, widget)
    assert notifications == [("error", OFFLINE)]
    assert "Model > weights file" in OFFLINE and "\n" not in OFFLINE
    assert widget.sections["Model"].isExpanded()
    [record] = [r for r in caplog.records if detail in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert record.exc_info is None  # an expected failure: no traceback on the terminal
    assert [layer.name for layer in viewer.layers] == ["photo"]


# ------------------------------------------------------------------------------ progress
def test_cancel_disables_at_once_and_late_progress_is_ignored(
    viewer_widget, qtbot, monkeypatch, segmenter
):
    _, widget = viewer_widget
    slow_run_settings(widget, monkeypatch, segmenter)
    widget.run()
    qtbot.waitUntil(
        lambda: any(stage == "encoder" for *_, stage, _ in widget.recorder.events),
        timeout=RUN_TIMEOUT_MS,
    )
    shown = shown_progress(widget)
    widget.cancel()
    assert not widget.cancel_button.enabled
    assert widget.stage.value == "cancelling..."
    widget._show_progress(9, 25, "encoder")  # an event already on its way from the worker
    assert widget.stage.value == "cancelling..."
    qtbot.waitUntil(lambda: not widget.running, timeout=RUN_TIMEOUT_MS)
    stages = [text for _, text in shown]
    assert set(stages[:-1]) == {"cancelling..."}  # never back to "encoder ..."
    assert stages[-1] == "ready"


def test_stack_run_is_one_bar_over_all_planes(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    stack = np.random.default_rng(0).integers(0, 255, (3, 40, 50), dtype=np.uint8)
    widget.image.value = viewer.add_image(stack, name="stack")
    widget.planes.value = "all planes"
    shown = shown_progress(widget)
    run_and_wait(qtbot, widget)
    during = [(value, text) for value, text in shown if text.startswith("plane ")]
    assert {text[:9] for _, text in during} == {"plane 1/3", "plane 2/3", "plane 3/3"}
    for value, text in during:
        plane = int(text[6])
        assert 1000 * (plane - 1) / 3 <= value <= 1000 * plane / 3 + 1, text
    assert [value for value, _ in during] == sorted(value for value, _ in during)


# ------------------------------------------------------------------------- background rule
def test_default_class_list_agrees_with_the_default_preset(make_napari_viewer, settings_file):
    widget = SegmentationWidget(make_napari_viewer())
    assert widget.preset.value == DEFAULT_PRESET
    assert widget.background.value is PRESETS[DEFAULT_PRESET].background
    assert widget.classes.value == DEFAULT_CLASSES
    request = widget.request()
    assert request.class_names == prepare(DEFAULT_CLASSES, preset=DEFAULT_PRESET).class_names
    assert request.class_list.background is PRESETS[DEFAULT_PRESET].background


def test_background_box_follows_the_preset_and_an_edit_makes_it_custom(viewer_widget):
    _, widget = viewer_widget
    for name in ("voc21", "cityscapes", "fast", "context60"):
        widget.preset.value = name
        assert widget.background.value is PRESETS[name].background
    assert widget.class_panel.source.value.endswith("line 0 is background (preset context60)")
    widget.background.value = False  # context60 has a background line
    assert widget.preset.value == CUSTOM
    assert widget.class_panel.source.value.endswith("line 0 is not background (custom)")
    assert widget.request().params.background is False
    widget.builtin.value = "voc21"  # a built-in class set sets it as its dataset needs
    assert widget.background.value is True


# ------------------------------------------------------------------------ what a re-run shows
def visible_names(viewer):
    return [layer.name for layer in viewer.layers if layer.visible]


def test_first_run_shows_the_labels_and_the_probability_asked_for(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    assert widget.show_probability.value == "none"
    run_and_wait(qtbot, widget)
    assert visible_names(viewer) == ["photo", "photo labels"]
    widget.show_probability.value = "cat"
    assert visible_names(viewer) == ["photo", "photo p(cat)", "photo labels"]
    widget.show_probability.value = "dog"
    assert visible_names(viewer) == ["photo", "photo p(dog)", "photo labels"]


def test_rerun_on_an_edited_result_hides_the_older_set(viewer_widget, qtbot, notifications):
    viewer, widget = viewer_widget
    run_and_wait(qtbot, widget)
    labels = viewer.layers["photo labels"]
    labels.data = np.zeros_like(labels.data)  # the user's correction
    widget.show_probability.value = "cat"
    run_and_wait(qtbot, widget)
    assert visible_names(viewer) == ["photo", "photo p(cat) [1]", "photo labels [1]"]
    assert "photo labels" in viewer.layers  # kept, hidden
    [(kind, message)] = notifications
    assert kind == "info" and "\n" not in message and len(message) <= 80
    assert "'photo labels [1]'" in message

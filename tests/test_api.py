"""The notebook API (`segment_layer`) with the tiny model (plane reading: test_planes.py)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_itaclip import Cancelled, segment_layer
from napari_itaclip.bundle import save_bundle
from napari_itaclip.engine.request import prepare

CLASSES = ["background", "cat", "dog, puppy"]


@pytest.fixture(autouse=True)
def single_torch_thread():
    """One torch thread: on a small shared machine a busy core stalls torch's OpenMP team at
    every op (the tiny model then takes ~1 s instead of ~15 ms per image)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


FAST = {"preset": "fast", "background": True, "short_side": 64, "progress": False}


class RecordingSegmenter:
    """Passes calls to a real ITACLIP and keeps the images it was given."""

    def __init__(self, inner):
        self.inner = inner
        self.images = []

    def segment(self, image, classes, **kwargs):
        self.images.append(np.array(image))
        return self.inner.segment(image, classes, **kwargs)


@pytest.fixture
def viewer():
    """napari's viewer model: the same layer list and dims as a viewer, without Qt (faster)."""
    from napari.components import ViewerModel

    return ViewerModel()


def test_segment_layer_adds_the_layers(viewer, segmenter, rgb_image):
    image = viewer.add_image(rgb_image, name="photo", scale=(2, 3), translate=(4, 5))
    added = segment_layer(viewer, "photo", CLASSES, segmenter=segmenter, **FAST)
    names = [layer.name for layer in added]
    assert names == ["photo p(background)", "photo p(cat)", "photo p(dog)", "photo labels"]
    assert all(layer in viewer.layers for layer in added)
    labels = viewer.layers["photo labels"]
    assert labels.data.shape == rgb_image.shape[:2]
    assert set(np.unique(labels.data)) <= {0, 1, 2}
    np.testing.assert_allclose(labels.scale, image.scale)
    np.testing.assert_allclose(labels.translate, image.translate)
    parameters = labels.metadata["itaclip"]["parameters"]
    assert parameters["short_side"] == 64
    assert parameters["classes"] == "background\ncat\ndog, puppy"
    assert parameters["source_layer"] == "photo"
    # the layers hold exactly what the engine returns for the same call
    options = {k: v for k, v in FAST.items() if k != "progress"}
    direct = segmenter.segment(rgb_image, CLASSES, **options)
    np.testing.assert_array_equal(labels.data, direct.labels)
    probabilities = np.stack(
        [viewer.layers[f"photo p({c})"].data for c in ("background", "cat", "dog")]
    )
    np.testing.assert_allclose(probabilities, direct.probabilities, atol=1e-6)


@pytest.mark.parametrize(
    "image",
    [
        np.random.default_rng(1).integers(0, 255, (40, 50, 4), dtype=np.uint8),  # RGBA
        np.random.default_rng(2).integers(0, 255, (40, 50), dtype=np.uint8),
        np.random.default_rng(3).integers(0, 60000, (40, 50), dtype=np.uint16),
        np.random.default_rng(4).random((40, 50), dtype=np.float32) * 7 - 3,
    ],
    ids=["rgba", "grey-uint8", "grey-uint16", "grey-float"],
)
def test_image_kinds(viewer, segmenter, image):
    layer = viewer.add_image(image, name="input")
    assert layer.rgb == (image.ndim == 3)
    [*_, labels] = segment_layer(viewer, layer, CLASSES, segmenter=segmenter, **FAST)
    assert labels.data.shape == (40, 50)


def test_channels_mapped_to_rgb(viewer, segmenter):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 4000, (4, 40, 50), dtype=np.uint16)  # (C, Y, X)
    viewer.add_image(data, name="channels", scale=(9, 2, 3))
    recording = RecordingSegmenter(segmenter)
    [*_, labels] = segment_layer(
        viewer, "channels", CLASSES, segmenter=recording, channel_axis=0, channels=[3, 1], **FAST
    )
    [given] = recording.images
    np.testing.assert_array_equal(given[..., 0], data[3])
    np.testing.assert_array_equal(given[..., 1], data[1])
    assert not given[..., 2].any()
    assert labels.data.shape == (40, 50)
    np.testing.assert_allclose(labels.scale, (2, 3))  # the channel axis is gone


def test_stack_all_planes_gives_one_stacked_layer(viewer, segmenter):
    stack = np.random.default_rng(0).integers(0, 255, (3, 40, 50), dtype=np.uint8)
    stack[1] = 0  # a distinct plane, to see it was segmented on its own
    viewer.add_image(stack, name="stack", scale=(5, 1, 1))
    recording = RecordingSegmenter(segmenter)
    added = segment_layer(viewer, "stack", CLASSES, segmenter=recording, planes="all", **FAST)
    assert len(recording.images) == 3
    assert not recording.images[1].any()
    labels = added[-1]
    assert labels.data.shape == (3, 40, 50)
    assert added[0].data.shape == (3, 40, 50)
    np.testing.assert_allclose(labels.scale, (5, 1, 1))
    assert len(added) == 4


def test_stack_current_plane_is_placed_at_its_plane(viewer, segmenter):
    stack = np.random.default_rng(0).integers(0, 255, (4, 40, 50), dtype=np.uint8)
    viewer.add_image(stack, name="stack", scale=(5, 1, 1), translate=(100, 0, 0))
    viewer.dims.set_point(0, 100 + 2 * 5)  # world z of plane 2
    recording = RecordingSegmenter(segmenter)
    [*_, labels] = segment_layer(
        viewer, "stack", CLASSES, segmenter=recording, planes="current", **FAST
    )
    [given] = recording.images
    np.testing.assert_array_equal(given, stack[2])
    assert labels.data.shape == (1, 40, 50)
    np.testing.assert_allclose(labels.translate, (110, 0, 0))


def test_large_probabilities_are_downsampled(viewer, segmenter, rgb_image):
    # 3 classes x 60 x 80 float32 is 57.6 kB; at f=4 it is 3 x 15 x 20 x 4 = 3.6 kB.
    budget_mb = 3 * 15 * 20 * 4 / 2**20
    assert prepare(CLASSES).probability_factor(60, 80) == 1
    assert prepare(CLASSES, probability_budget_mb=budget_mb).probability_factor(60, 80) == 4
    # Two planes share the budget: each may use half, so f grows to 6 (ceil(60/6) x ceil(80/6)
    # = 10 x 14 per plane and class; f=5 gives 12 x 16).
    assert prepare(CLASSES, probability_budget_mb=budget_mb).probability_factor(60, 80, 2) == 6
    viewer.add_image(rgb_image, name="photo", scale=(2, 2))
    added = segment_layer(
        viewer, "photo", CLASSES, segmenter=segmenter, probability_budget_mb=budget_mb, **FAST
    )
    assert added[0].data.shape == (15, 20)
    np.testing.assert_allclose(added[0].scale, (8, 8))
    assert added[-1].data.shape == (60, 80)


def test_rerun_replaces_an_unedited_result_in_place(viewer, segmenter, rgb_image):
    viewer.add_image(rgb_image, name="photo")
    first = segment_layer(viewer, "photo", CLASSES, segmenter=segmenter, **FAST)
    first[-1].opacity = 0.3  # a display setting the user chose
    viewer.add_points(name="annotations")
    second = segment_layer(viewer, "photo", CLASSES, segmenter=segmenter, stride=32, **FAST)
    assert [layer.name for layer in viewer.layers] == [
        "photo", "photo p(background)", "photo p(cat)", "photo p(dog)", "photo labels", "annotations",
    ]  # fmt: skip
    assert second[-1].opacity == 0.3
    assert second[-1].metadata["itaclip"]["parameters"]["stride"] == 32


def test_rerun_with_other_classes_keeps_the_layer_position(viewer, segmenter, rgb_image):
    viewer.add_image(rgb_image, name="photo")
    segment_layer(viewer, "photo", CLASSES, segmenter=segmenter, **FAST)
    viewer.add_points(name="annotations")
    segment_layer(viewer, "photo", ["background", "cat"], segmenter=segmenter, **FAST)
    assert [layer.name for layer in viewer.layers] == [
        "photo", "photo p(background)", "photo p(cat)", "photo labels", "annotations",
    ]  # fmt: skip


def test_rerun_never_replaces_corrections(viewer, segmenter, rgb_image):
    viewer.add_image(rgb_image, name="photo")
    [*_, labels] = segment_layer(viewer, "photo", CLASSES, segmenter=segmenter, **FAST)
    labels.data[0, 0] = (labels.data[0, 0] + 1) % 3  # a correction
    labels.refresh()
    corrected = labels.data.copy()
    [*_, new] = segment_layer(viewer, "photo", CLASSES, segmenter=segmenter, **FAST)
    assert new.name == "photo labels [1]"
    np.testing.assert_array_equal(viewer.layers["photo labels"].data, corrected)
    assert "photo p(cat) [1]" in viewer.layers
    # the numbered, unedited result is the one a third run replaces
    segment_layer(viewer, "photo", CLASSES, segmenter=segmenter, **FAST)
    assert sum(layer.name.startswith("photo labels") for layer in viewer.layers) == 2


def test_rerun_keeps_a_result_loaded_from_a_file(viewer, segmenter, rgb_image, tmp_path):
    from napari_itaclip.engine.result import SegmentationResult

    viewer.add_image(rgb_image, name="photo")
    result = SegmentationResult(
        labels=np.zeros(rgb_image.shape[:2], np.uint8),
        probabilities=np.zeros((2, *rgb_image.shape[:2]), np.float32),
        class_names=["background", "cat"],
        background=True,
        parameters={},
    )
    from napari.layers import Layer

    from napari_itaclip._reader import get_reader

    path = str(save_bundle(tmp_path / "photo", result, name="photo"))
    for item in get_reader(path)(path):
        viewer.add_layer(Layer.create(*item))
    segment_layer(viewer, "photo", CLASSES, segmenter=segmenter, **FAST)
    assert not viewer.layers["photo labels"].data.any()  # the loaded one, untouched
    assert "photo labels [1]" in viewer.layers


def test_bad_input_raises_clear_errors(viewer, segmenter, rgb_image):
    viewer.add_image(rgb_image, name="photo")
    viewer.add_labels(np.zeros((4, 4), np.uint8), name="mask")
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        segment_layer(viewer, "nope", CLASSES, segmenter=segmenter, **FAST)
    with pytest.raises(TypeError, match="not an Image"):
        segment_layer(viewer, "mask", CLASSES, segmenter=segmenter, **FAST)
    with pytest.raises(ValueError, match="duplicate class name"):
        segment_layer(viewer, "photo", ["background", "cat", "Cat"], segmenter=segmenter, **FAST)
    with pytest.raises(ValueError, match="RGB"):
        segment_layer(viewer, "photo", CLASSES, segmenter=segmenter, channel_axis=0, **FAST)
    assert [layer.name for layer in viewer.layers] == ["photo", "mask"]


def test_segmenter_made_from_options(viewer, tiny_weights, rgb_image):
    viewer.add_image(rgb_image, name="photo")
    added = segment_layer(
        viewer, "photo", CLASSES, pretrained=str(tiny_weights), device="cpu", **FAST
    )
    info = added[-1].metadata["itaclip"]["parameters"]
    assert info["model"].startswith("file:") and info["model"].endswith(
        f"{tiny_weights.stat().st_size}:{tiny_weights.stat().st_mtime_ns}"
    )
    assert info["device"] == "cpu"


def test_segment_layer_loads_one_model_per_key(viewer, segmenter, rgb_image, monkeypatch):
    from napari_itaclip import segmenters

    loads = []

    def load(*key):
        loads.append(key)
        return segmenter

    monkeypatch.setattr(segmenters, "load_segmenter", load)
    segmenters.SEGMENTERS.clear()
    viewer.add_image(rgb_image, name="photo")
    segment_layer(viewer, "photo", CLASSES, **FAST)
    segment_layer(viewer, "photo", CLASSES, **FAST)
    assert loads == [("ViT-B-16", "openai", "auto", "auto")]
    segment_layer(viewer, "photo", CLASSES, precision="fp32", **FAST)
    assert loads[1:] == [("ViT-B-16", "openai", "auto", "fp32")]
    segmenters.SEGMENTERS.clear()


def test_moved_names_still_import_from_api():
    from napari_itaclip import api, planes, viewer

    assert api.LayerPlanes is planes.LayerPlanes
    assert api.segment_planes is planes.segment_planes
    assert api.current_position is planes.current_position
    assert api.add_result_layers is viewer.add_result_layers
    assert api.add_result_layers_in_steps is viewer.add_result_layers_in_steps


def test_result_to_layer_data_is_exported():
    import napari_itaclip

    assert callable(napari_itaclip.result_to_layer_data)
    assert callable(napari_itaclip.segment_layer)


# ------------------------------------------------------------------ napari's activity dock
def test_segment_layer_bar_shows_the_model_loading_and_download(
    viewer, segmenter, rgb_image, monkeypatch
):
    from napari_itaclip import api, segmenters

    described = []

    class RecordedBar(api.ActivityBar):
        def __init__(self):
            super().__init__()
            self.bar.events.description.connect(lambda event: described.append(event.value))

    def downloading(*key, progress=None):
        progress(300 * 2**20, 600 * 2**20, "download")
        return segmenter

    monkeypatch.setattr(api, "ActivityBar", RecordedBar)
    monkeypatch.setattr(segmenters, "load_segmenter", downloading)
    segmenters.SEGMENTERS.clear()
    viewer.add_image(rgb_image, name="photo")
    segment_layer(viewer, "photo", CLASSES, **{**FAST, "progress": True})
    segmenters.SEGMENTERS.clear()
    assert described[:2] == [
        "loading model ViT-B-16 (openai)",
        "downloading weights: 300 / 600 MB (50%)",
    ]
    assert described[-1].startswith("refine")


def dock_bars(viewer):
    """The progress bars napari's activity dock shows."""
    from napari._qt.widgets.qt_progress_bar import QtLabeledProgressBar

    dialog = viewer.window._qt_window._activity_dialog
    bars = dialog.findChildren(QtLabeledProgressBar)
    return [bar for bar in bars if bar.isVisibleTo(dialog)]


class DockWatcher:
    """Passes calls to a real ITACLIP and records, after each progress event, what the
    activity dock shows (description, value); `act(watcher, stage)` runs after each event."""

    def __init__(self, inner, viewer, act=lambda watcher, stage: None):
        self.inner, self.viewer, self.act = inner, viewer, act
        self.shown = []

    def segment(self, image, request, progress=None, **kwargs):
        def watched(done, total, stage):
            progress(done, total, stage)
            [bar] = dock_bars(self.viewer)
            self.shown.append((bar.description_label.text(), bar.qt_progress_bar.value()))
            self.act(self, stage)

        return self.inner.segment(image, request, progress=watched, **kwargs)


@pytest.mark.gui
def test_activity_dock_shows_one_bar_for_the_whole_run(make_napari_viewer, segmenter, rgb_image):
    viewer = make_napari_viewer()  # the viewer first, as a user has it
    viewer.add_image(np.stack([rgb_image] * 2), name="stack", rgb=True)
    watcher = DockWatcher(segmenter, viewer)
    segment_layer(viewer, "stack", CLASSES, segmenter=watcher, **{**FAST, "progress": True})
    values = [value for _, value in watcher.shown]
    assert values == sorted(values) and values[-1] == 1000
    assert {text[:9] for text, _ in watcher.shown} == {"plane 1/2", "plane 2/2"}
    assert dock_bars(viewer) == []  # closed when the run ends


@pytest.mark.gui
def test_activity_dock_cancel_stops_the_run_saying_cancelling(
    make_napari_viewer, segmenter, rgb_image, monkeypatch
):
    from qtpy.QtCore import QTimer

    viewer = make_napari_viewer()  # the viewer first, as a user has it
    viewer.add_image(rgb_image, name="photo")
    monkeypatch.setattr(segmenter, "batch_size", 5)  # many encoder chunks to stop between
    pressed = []

    def press_cancel_during_the_encoder(watcher, stage):
        if stage == "encoder" and not pressed:
            [bar] = dock_bars(viewer)
            pressed.append(len(watcher.shown))
            # a click, delivered when napari next processes events (at a progress update)
            QTimer.singleShot(0, bar.cancel_button.click)

    watcher = DockWatcher(segmenter, viewer, press_cancel_during_the_encoder)
    with pytest.raises(Cancelled):
        segment_layer(viewer, "photo", CLASSES, segmenter=watcher, preset="voc21")
    assert pressed
    before = [text for text, _ in watcher.shown[: pressed[0]]]
    after = [text for text, _ in watcher.shown[pressed[0] :]]
    assert before[-1].startswith("encoder")
    assert after and set(after) == {"cancelling...: "}  # until it stopped
    assert dock_bars(viewer) == []
    assert [layer.name for layer in viewer.layers] == ["photo"]

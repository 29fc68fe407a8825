"""The shared segmenter cache: one model per (loader, key), never two in memory, thread-safe."""

from __future__ import annotations

import threading
import time
import weakref
from pathlib import Path

import pytest

from napari_itaclip import segmenters
from napari_itaclip.segmenters import SegmenterCache


class Model:
    """Stands in for an ITACLIP (weak-referenceable, so a test sees when it is freed)."""

    def __init__(self, *key):
        self.key = key


class CountingLoader:
    def __init__(self):
        self.keys = []
        self.alive_at_load = []  # how many models made earlier were still alive at each load
        self._made = []

    def __call__(self, *key):
        self.alive_at_load.append(sum(ref() is not None for ref in self._made))
        self.keys.append(key)
        model = Model(*key)
        self._made.append(weakref.ref(model))
        return model


def test_same_key_reuses_the_model_and_another_key_replaces_it():
    cache, load = SegmenterCache(), CountingLoader()
    first = cache.get(("ViT-B-16", "openai", "cpu", "auto"), load)
    assert cache.get(("ViT-B-16", "openai", "cpu", "auto"), load) is first
    assert load.keys == [("ViT-B-16", "openai", "cpu", "auto")]
    del first
    second = cache.get(("ViT-B-16", "openai", "cpu", "fp32"), load)
    assert second.key == ("ViT-B-16", "openai", "cpu", "fp32")
    assert len(load.keys) == 2
    assert load.alive_at_load == [0, 0]  # the old model was freed before the new one loaded


def test_another_loader_is_another_model():
    cache, load, other = SegmenterCache(), CountingLoader(), CountingLoader()
    key = ("ViT-B-16", "openai", "cpu", "auto")
    assert cache.get(key, load) is not cache.get(key, other)
    assert len(load.keys) == len(other.keys) == 1


def test_concurrent_callers_share_one_load():
    cache = SegmenterCache()
    loads = []

    def slow_load(*key):
        loads.append(key)
        time.sleep(0.05)  # long enough for the other threads to arrive meanwhile
        return Model(*key)

    got = []
    threads = [
        threading.Thread(target=lambda: got.append(cache.get(("m", "p"), slow_load)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1
    assert len(got) == 4 and all(model is got[0] for model in got)


def test_failed_load_leaves_the_cache_empty_and_is_retried():
    cache, load = SegmenterCache(), CountingLoader()
    cache.get(("a",), load)

    def failing(*key):
        raise RuntimeError("offline")

    with pytest.raises(RuntimeError, match="offline"):
        cache.get(("b",), failing)
    assert cache.get(("a",), load).key == ("a",)
    assert len(load.keys) == 2  # "a" was dropped before "b" was tried: loaded again


def test_get_segmenter_keys_a_weights_path_and_its_string_alike(monkeypatch):
    load = CountingLoader()
    monkeypatch.setattr(segmenters, "load_segmenter", load)
    monkeypatch.setattr(segmenters, "SEGMENTERS", SegmenterCache())
    first = segmenters.get_segmenter("ViT-B-16", Path("/w/tiny.pt"), "cpu")
    assert segmenters.get_segmenter("ViT-B-16", "/w/tiny.pt", "cpu", "auto") is first
    assert load.keys == [("ViT-B-16", "/w/tiny.pt", "cpu", "auto")]


@pytest.mark.gui
def test_widget_and_segment_layer_share_one_model(
    make_napari_viewer, qtbot, segmenter, rgb_image, monkeypatch, tmp_path
):
    from napari_itaclip import segment_layer
    from napari_itaclip._widget import SegmentationWidget
    from test_widget import run_and_wait

    loads = []

    def load(*key, progress=None):  # the widget passes its download progress
        loads.append(key)
        return segmenter

    monkeypatch.setenv("NAPARI_ITACLIP_SETTINGS", str(tmp_path / "widget.json"))
    default_loader = segmenters.load_segmenter
    monkeypatch.setattr(segmenters, "load_segmenter", load)
    monkeypatch.setattr(segmenters, "SEGMENTERS", SegmenterCache())
    monkeypatch.setattr("napari_itaclip._widget.SEGMENTERS", segmenters.SEGMENTERS)
    viewer = make_napari_viewer()
    viewer.add_image(rgb_image, name="photo")
    widget = SegmentationWidget(viewer)
    assert widget.segmenter_factory is default_loader  # the loader `get_segmenter` uses
    widget.segmenter_factory = load  # as the monkeypatched module now has it
    widget.classes.value = "background\ncat"
    widget.preset.value = "fast"
    widget.short_side.value = 64
    run_and_wait(qtbot, widget)
    assert "photo labels" in viewer.layers
    options = {"preset": "fast", "short_side": 64, "progress": False}
    segment_layer(viewer, "photo", ["background", "cat"], **options)
    assert loads == [("ViT-B-16", "openai", "auto", "auto")]

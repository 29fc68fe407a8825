"""The zarr label store (`--format zarr`, `label_store.LabelStore`): a stack's class ids
written plane by plane without assembling the stack, atomic under its final name, resumed
plane by plane after an interrupted run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_itaclip import batch
from napari_itaclip.batch import BatchProgress, segment_files
from napari_itaclip.engine import prepare
from napari_itaclip.io import LABEL_METADATA_KEY, find_images
from napari_itaclip.label_store import LabelStore, partial_folder
from test_batch import CLASSES, SETTINGS, H, W, random_stack

zarr = pytest.importorskip("zarr")


@pytest.fixture(scope="module")
def request_():
    return prepare(CLASSES, **SETTINGS)


class CountingSegmenter:
    """The tiny segmenter, counting its calls; `fail_on` raises on the plane of that mean
    (a plane's mean names it: no two planes of the test stacks share one)."""

    def __init__(self, segmenter, fail_on: float | None = None):
        self.segmenter, self.fail_on, self.calls = segmenter, fail_on, 0

    def segment(self, image, request, **kwargs):
        self.calls += 1
        if self.fail_on is not None and np.isclose(image.mean(), self.fail_on):
            raise RuntimeError("out of memory on this plane")
        return self.segmenter.segment(image, request, **kwargs)


class Notes(BatchProgress):
    def __init__(self):
        self.notes = []

    def note(self, message):
        self.notes.append(message)


def no_assembly(monkeypatch):
    """Fail the test if a stacked result is assembled (the whole stack in memory)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the stack was assembled")

    monkeypatch.setattr(batch, "segment_planes", refuse)


def tiff_stack(folder: Path, seed: int = 0, planes: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "stack.tif"
    tifffile.imwrite(path, random_stack(seed, (planes, H, W)), photometric="minisblack")
    return path


def stored(path: Path) -> np.ndarray:
    return np.asarray(zarr.open_array(path, mode="r")[...])


def test_zarr_alone_streams_the_planes_of_the_tiff_result(
    tmp_path, segmenter, request_, monkeypatch
):
    path = tiff_stack(tmp_path / "in")
    segment_files([path], request_, tmp_path / "tif", segmenter=segmenter, formats=["tif"])
    no_assembly(monkeypatch)
    report = segment_files(
        [path], request_, tmp_path / "zarr", segmenter=segmenter, formats=["zarr"]
    )

    assert report.written == [path] and not report.failed
    # the store and the overlay, nothing partial or hidden left beside them
    assert sorted(p.name for p in (tmp_path / "zarr").iterdir()) == [
        "stack_labels.zarr",
        "stack_overlay.png",
    ]
    array = zarr.open_array(tmp_path / "zarr" / "stack_labels.zarr", mode="r")
    assert array.shape == (3, H, W) and array.dtype == np.uint8 and array.chunks == (1, H, W)
    np.testing.assert_array_equal(
        array[...], tifffile.imread(tmp_path / "tif" / "stack_labels.tif")
    )
    metadata = array.attrs[LABEL_METADATA_KEY]
    assert metadata["class_names"] == ["background", "cat", "dog"] and metadata["background"]
    assert metadata["parameters"]["preset"] == "fast"
    # the overlay's plane read back from the store is the assembled run's
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "zarr" / "stack_overlay.png")),
        np.asarray(Image.open(tmp_path / "tif" / "stack_overlay.png")),
    )


def test_a_zarr_input_and_a_2d_image_give_their_tiff_labels(tmp_path, segmenter, request_):
    from test_cluster import write_ome_zarr

    data = random_stack(5, (3, 1, H, W))
    write_ome_zarr(tmp_path / "in" / "volume.zarr", data)
    tifffile.imwrite(tmp_path / "in" / "slices.tif", data[:, 0], photometric="minisblack")
    Image.fromarray(data[0, 0]).save(tmp_path / "in" / "photo.png")
    images = [tmp_path / "in" / name for name in ("volume.zarr", "slices.tif", "photo.png")]
    out = tmp_path / "out"
    report = segment_files(images, request_, out, segmenter=segmenter, formats=["zarr", "tif"])

    assert report.written == images
    np.testing.assert_array_equal(
        stored(out / "volume_labels.zarr"), tifffile.imread(out / "slices_labels.tif")
    )
    assert stored(out / "photo_labels.zarr").shape == (H, W)  # a 2D image: one plane
    np.testing.assert_array_equal(
        stored(out / "photo_labels.zarr"), tifffile.imread(out / "photo_labels.tif")
    )


def test_an_interrupted_store_resumes_with_its_missing_planes_only(tmp_path, segmenter, request_):
    path = tiff_stack(tmp_path / "in")
    stack = tifffile.imread(path)
    out = tmp_path / "out"
    store_path = out / "stack_labels.zarr"
    failing = CountingSegmenter(segmenter, fail_on=stack[1].mean())

    first = segment_files([path], request_, out, segmenter=failing, formats=["zarr"])

    assert "out of memory on this plane" in first.failed[path]
    assert not store_path.exists()  # a partial store never has the final name
    assert find_images([out])[0] == []  # nor does a folder scan see it
    partial = partial_folder(store_path)
    # Plane 0 is done: a sentinel planted there must survive. Plane 1 failed: data as a worker
    # killed mid-write leaves it (no marker) must be replaced.
    array = zarr.open_array(partial / "labels.zarr", mode="r+")
    array[0] = 7
    array[1] = 9
    counting = CountingSegmenter(segmenter)

    again = segment_files([path], request_, out, segmenter=counting, formats=["zarr"])

    assert again.written == [path] and counting.calls == 2  # planes 1 and 2
    labels = stored(store_path)
    assert (labels[0] == 7).all()
    for z in (1, 2):
        np.testing.assert_array_equal(labels[z], segmenter.segment(stack[z], request_).labels)
    assert not partial.exists()

    before = {p: p.stat().st_mtime_ns for p in store_path.rglob("*")}
    finished = segment_files([path], request_, out, segmenter=None, formats=["zarr"])
    assert finished.skipped == [path]  # complete: not read, no model needed
    assert {p: p.stat().st_mtime_ns for p in store_path.rglob("*")} == before


def test_a_partial_folder_left_beside_a_finished_store_is_removed(tmp_path, segmenter, request_):
    """A writer killed between the final rename and removing the partial folder leaves it;
    the next run finds the store complete and removes the folder, without segmenting."""
    path = tiff_stack(tmp_path / "in", planes=2)
    out = tmp_path / "out"
    segment_files([path], request_, out, segmenter=segmenter, formats=["zarr"], overlay=False)
    leftover = partial_folder(out / "stack_labels.zarr")
    (leftover / "planes").mkdir(parents=True)
    report = segment_files([path], request_, out, segmenter=None, formats=["zarr"], overlay=False)
    assert report.skipped == [path] and not leftover.exists()


def test_a_partial_store_of_other_parameters_is_started_anew(tmp_path, segmenter, request_):
    path = tiff_stack(tmp_path / "in", planes=2)
    out = tmp_path / "out"
    failing = CountingSegmenter(segmenter, fail_on=tifffile.imread(path)[1].mean())
    segment_files([path], request_, out, segmenter=failing, formats=["zarr"])
    assert partial_folder(out / "stack_labels.zarr").is_dir()

    other = prepare(CLASSES, **{**SETTINGS, "short_side": 48})
    counting = CountingSegmenter(segmenter)
    segment_files([path], other, out, segmenter=counting, formats=["zarr"])
    assert counting.calls == 2  # plane 0 was made with other parameters
    attributes = zarr.open_array(out / "stack_labels.zarr", mode="r").attrs[LABEL_METADATA_KEY]
    assert attributes["parameters"]["short_side"] == 48


def test_overwrite_replaces_a_finished_store_whole(tmp_path, segmenter, request_):
    path = tiff_stack(tmp_path / "in", planes=2)
    out = tmp_path / "out"
    segment_files([path], request_, out, segmenter=segmenter, formats=["zarr"], overlay=False)
    zarr.open_array(out / "stack_labels.zarr", mode="r+")[0] = 7
    counting = CountingSegmenter(segmenter)
    report = segment_files(
        [path], request_, out, segmenter=counting, formats=["zarr"], overlay=False, overwrite=True
    )
    assert report.written == [path] and counting.calls == 2
    assert not (stored(out / "stack_labels.zarr") == 7).all()
    assert [p.name for p in out.iterdir()] == ["stack_labels.zarr"]


def test_the_overlay_alone_segments_the_middle_plane_alone(tmp_path, segmenter, request_):
    path = tiff_stack(tmp_path / "in")
    segment_files([path], request_, tmp_path / "all", segmenter=segmenter, formats=["tif"])
    counting = CountingSegmenter(segmenter)
    segment_files([path], request_, tmp_path / "one", segmenter=counting, formats=[])
    assert counting.calls == 1
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "one" / "stack_overlay.png")),
        np.asarray(Image.open(tmp_path / "all" / "stack_overlay.png")),
    )


def test_a_big_stack_asked_as_tiff_gets_a_note_recommending_zarr(
    tmp_path, segmenter, request_, monkeypatch
):
    monkeypatch.setattr(batch, "BIG_STACK_BYTES", 2 * H * W)  # 3 planes of uint8 exceed it
    path = tiff_stack(tmp_path / "in")
    notes = Notes()
    segment_files(
        [path], request_, tmp_path / "a", segmenter=segmenter, formats=["tif"], progress=notes
    )
    assert len(notes.notes) == 1
    assert "held whole in memory for the tif output; --format zarr" in notes.notes[0]
    notes = Notes()
    segment_files(
        [path], request_, tmp_path / "b", segmenter=segmenter, formats=["zarr"], progress=notes
    )
    assert notes.notes == []


def test_store_plane_chunks_tiles_and_refuses_to_finish_with_missing_planes(tmp_path, monkeypatch):
    from napari_itaclip import label_store

    monkeypatch.setattr(label_store, "TILE", 16)
    store = LabelStore(tmp_path / "x_labels.zarr", (2, 3), (40, 20))
    store.open(["a", "b"], False, {"preset": "fast"})
    assert zarr.open_array(store.partial / "labels.zarr").chunks == (1, 1, 16, 16)
    store.write((1, 2), np.ones((40, 20), np.int64))
    assert store.missing() == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    with pytest.raises(ValueError, match="5 of 6 planes of x_labels.zarr are not written"):
        store.finish()
    assert not store.path.exists()
    for index in store.missing():
        store.write(index, np.zeros((40, 20), np.uint8))
    store.finish()
    finished = zarr.open_array(store.path, mode="r")
    assert finished.dtype == np.uint8 and finished[1, 2].sum() == 40 * 20
    assert finished.attrs[LABEL_METADATA_KEY] == {
        "class_names": ["a", "b"],
        "background": False,
        "parameters": {"preset": "fast"},
    }


def test_cli_format_zarr_writes_the_store(tmp_path, tiny_weights, capsys):
    from napari_itaclip.cli import EXIT_OK, main

    path = tiff_stack(tmp_path / "in")
    out = tmp_path / "out"
    args = ["segment", str(path), "--classes", CLASSES, "--out", str(out), "--format", "zarr"]
    model = ["--pretrained", str(tiny_weights), "--device", "cpu", "--preset", "fast"]
    assert main([*args, *model, "--short-side", "64"]) == EXIT_OK
    assert "1 segmented, 0 skipped, 0 failed" in capsys.readouterr().out
    assert stored(out / "stack_labels.zarr").shape == (3, H, W)


def test_a_tiff_stack_is_read_one_plane_at_a_time_at_full_resolution(tmp_path):
    from napari_itaclip.io import read_image

    stack = random_stack(6, (3, 1, H, W, 3))  # a length-1 axis, dropped as when read whole
    tifffile.imwrite(tmp_path / "rgb.tif", stack, photometric="rgb")
    with tifffile.TiffWriter(tmp_path / "pyramid.tif") as tiff:
        tiff.write(stack[:, 0, ..., 0], subifds=1, photometric="minisblack")
        tiff.write(stack[:, 0, ::2, ::2, 0], subfiletype=1, photometric="minisblack")
    for name in ("rgb.tif", "pyramid.tif"):
        whole, lazy = read_image(tmp_path / name), read_image(tmp_path / name, lazy=True)
        assert not isinstance(lazy, np.ndarray) and lazy.shape == whole.shape
        np.testing.assert_array_equal(lazy[1], whole[1])
    (tmp_path / "broken.tif").write_bytes(b"not a TIFF")
    with pytest.raises(ValueError, match="cannot read TIFF"):
        read_image(tmp_path / "broken.tif", lazy=True)

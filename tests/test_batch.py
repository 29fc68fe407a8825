"""`batch.segment_files`, the batch loop behind `napari-itaclip segment`, called from Python."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_itaclip import SegmentationResult
from napari_itaclip.batch import (
    BatchProgress,
    planned_outputs,
    segment_files,
    stack_shape,
    write_outputs,
)
from napari_itaclip.bundle import load_bundle
from napari_itaclip.engine import prepare
from napari_itaclip.io import LABEL_METADATA_KEY, ImageFile
from napari_itaclip.planes import LayerPlanes

CLASSES = "background; cat; dog, puppy"
SETTINGS = {"preset": "fast", "background": True, "short_side": 64}
H, W = 40, 50


@pytest.fixture(scope="module")
def request_():
    return prepare(CLASSES, **SETTINGS)


def random_stack(seed: int, shape) -> np.ndarray:
    stack = np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)
    stack[1, : H // 2] //= 4  # planes that differ in more than noise
    return stack


class Recorder(BatchProgress):
    def __init__(self):
        self.events = []

    def start(self, name):
        self.events.append(("start", name))

    def note(self, message):
        self.events.append(("note", message))

    def failure(self, path, exc):
        self.events.append(("failure", Path(path).name))

    def image_done(self):
        self.events.append(("done",))


@pytest.mark.parametrize("shape", [(3, H, W), (3, H, W, 3)], ids=["ZYX", "ZYX3"])
def test_a_tiff_stack_gives_one_stacked_result_equal_to_its_planes_alone(
    tmp_path, segmenter, request_, shape
):
    stack = random_stack(0, shape)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack, photometric="rgb" if len(shape) == 4 else "minisblack")
    progress = Recorder()
    report = segment_files(
        [path], request_, tmp_path / "out", segmenter=segmenter, progress=progress
    )
    assert report.written == [path] and not report.failed

    out = tmp_path / "out"
    # png was asked for, but a PNG holds one plane: the label image is a TIFF, said once.
    assert sorted(p.name for p in out.iterdir()) == [
        "stack.itaclip",
        "stack_labels.tif",
        "stack_overlay.png",
    ]
    assert [e for e in progress.events if e[0] == "note"] == [
        (
            "note",
            "stack.tif is a stack of 3 planes: label images of stacks are TIFFs (a PNG holds one plane)",
        )
    ]
    with tifffile.TiffFile(out / "stack_labels.tif") as tif:
        labels = tif.asarray()
        stored = tif.shaped_metadata[0][LABEL_METADATA_KEY]
        # one grey page per plane: 3 planes of uint8 must not be taken for an RGB image
        assert len(tif.pages) == 3
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK
    assert labels.shape == (3, H, W)
    assert stored == {"class_names": ["background", "cat", "dog"], "background": True}
    for z in range(3):
        alone = segmenter.segment(stack[z], request_)
        np.testing.assert_array_equal(labels[z], alone.labels)
    bundle = load_bundle(out / "stack.itaclip")
    np.testing.assert_array_equal(bundle.label_image, labels)  # background: label id = class id
    assert bundle.parameters["n_planes"] == 3 and bundle.name == "stack.tif"
    assert np.asarray(Image.open(out / "stack_overlay.png")).shape == (H, W, 3)


def test_the_overlay_of_a_stack_is_its_middle_plane(tmp_path, segmenter, request_):
    stack = random_stack(1, (3, H, W))
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack, photometric="minisblack")
    segment_files([path], request_, tmp_path / "stacked", segmenter=segmenter, formats=())
    tifffile.imwrite(tmp_path / "middle.tif", stack[1])
    segment_files([tmp_path / "middle.tif"], request_, tmp_path / "one", segmenter=segmenter)
    stacked = np.asarray(Image.open(tmp_path / "stacked" / "stack_overlay.png"))
    np.testing.assert_array_equal(
        stacked, np.asarray(Image.open(tmp_path / "one" / "middle_overlay.png"))
    )


def test_complete_images_are_skipped_unread_and_failures_recorded(tmp_path, segmenter, request_):
    stack = tmp_path / "in" / "stack.tif"
    stack.parent.mkdir()
    tifffile.imwrite(stack, random_stack(2, (2, H, W)), photometric="minisblack")
    broken = tmp_path / "in" / "broken.png"
    broken.write_bytes(b"not a PNG")
    images = [ImageFile(stack, Path("sub")), broken]
    out = tmp_path / "out"
    first = segment_files(images, request_, out, segmenter=segmenter)
    assert first.written == [stack] and first.skipped == []
    assert list(first.failed) == [broken] and "cannot decode" in first.failed[broken]
    assert (out / "sub" / "stack_labels.tif").is_file()

    progress = Recorder()
    again = segment_files(images[:1], request_, out, segmenter=None, progress=progress)
    assert again.skipped == [stack] and again.written == []  # no model needed to skip
    assert progress.events == [("start", "stack.tif"), ("done",)]


def test_two_images_with_one_output_name_fail_the_second(tmp_path, segmenter, request_):
    for name in ("a.png", "a.jpg"):
        Image.fromarray(random_stack(3, (2, H, W, 3))[0]).save(tmp_path / name)
    images = [tmp_path / "a.png", tmp_path / "a.jpg"]
    report = segment_files(images, request_, tmp_path / "out", segmenter=segmenter, formats=["tif"])
    assert report.written == [tmp_path / "a.png"]
    assert "would overwrite those of" in report.failed[tmp_path / "a.jpg"]


def test_bad_output_folder_or_format_is_refused_before_any_image(tmp_path, request_):
    taken = tmp_path / "taken"
    taken.write_text("")
    with pytest.raises(ValueError, match="is a file"):
        segment_files([tmp_path / "a.png"], request_, taken, segmenter=None)
    with pytest.raises(ValueError, match="unknown output formats \\['jpeg'\\]"):
        segment_files(
            [tmp_path / "a.png"], request_, tmp_path / "out", segmenter=None, formats=["jpeg"]
        )
    assert not (tmp_path / "out").exists()


def test_interrupt_stops_the_batch(tmp_path, request_):
    class Interrupting:
        def segment(self, *args, **kwargs):
            raise KeyboardInterrupt

    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(KeyboardInterrupt):
        segment_files([tmp_path / "a.png"], request_, tmp_path / "out", segmenter=Interrupting())


@pytest.mark.parametrize(
    ("shape", "stack"),
    [((H, W), ()), ((H, W, 3), ()), ((4, H, W), (4,)), ((2, 4, H, W, 3), (2, 4))],
)
def test_stack_shape_follows_the_planes_rule(shape, stack):
    assert stack_shape(shape) == stack


def test_outputs_go_to_tiff_above_256_classes_and_label_ids_are_class_ids(tmp_path):
    names = [f"class {i}" for i in range(300)]
    labels = np.arange(24 * 30, dtype=np.uint16).reshape(24, 30) % 300
    result = SegmentationResult(
        labels=labels,
        probabilities=np.zeros((300, 24, 30), np.float32),
        class_names=names,
        background=False,
        parameters={},
    )
    outputs = planned_outputs(tmp_path / "photo", {"png", "bundle"}, 300, overlay=True)
    assert outputs["tif"] == tmp_path / "photo_labels.tif" and "png" not in outputs
    image = np.zeros((24, 30, 3), np.uint8)
    request = prepare("; ".join(names), background=False)
    write_outputs(outputs, result, LayerPlanes.from_array(image), "photo.png", request)
    np.testing.assert_array_equal(tifffile.imread(outputs["tif"]), labels)
    assert load_bundle(outputs["bundle"]).label_image.max() == 300  # label ids: class id + 1
    overlay = np.asarray(Image.open(outputs["overlay"]))
    assert overlay.shape == (24, 30, 3)

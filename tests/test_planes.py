"""Plane handling without napari: `LayerPlanes` from a layer or a plain array, `segment_planes`."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from napari_itaclip.engine.request import prepare
from napari_itaclip.planes import LayerPlanes, segment_planes
from test_api import single_torch_thread  # noqa: F401 (autouse: one torch thread)

CLASSES = ["background", "cat", "dog, puppy"]
REQUEST = {"preset": "fast", "background": True, "short_side": 64}

NAPARI_FREE = """
import sys
from types import SimpleNamespace
import numpy as np
from napari_itaclip.planes import LayerPlanes, current_position, segment_planes
import napari_itaclip.segmenters, napari_itaclip.labels

layer = SimpleNamespace(data=np.zeros((2, 8, 9)), multiscale=False, rgb=False, ndim=3, name="x")
assert LayerPlanes.from_layer(layer).stack_shape == (2,)
assert LayerPlanes.from_array(np.zeros((2, 8, 9, 3), np.uint8)).rgb
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("napari", "qtpy", "magicgui"))
print(loaded)
"""


def test_planes_module_imports_no_napari():
    done = subprocess.run(
        [sys.executable, "-c", NAPARI_FREE], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_from_array_zyx_stack():
    stack = np.arange(3 * 5 * 7, dtype=np.uint16).reshape(3, 5, 7)
    planes = LayerPlanes.from_array(stack, name="stack.tif")
    assert not planes.rgb
    assert planes.stack_shape == (3,) and planes.plane_shape == (5, 7)
    assert planes.indices() == [(0,), (1,), (2,)]
    np.testing.assert_array_equal(planes.read((2,)), stack[2])
    assert planes.describe()["source_layer"] == "stack.tif"


def test_from_array_rgb_stack_found_by_its_last_axis():
    stack = np.random.default_rng(0).integers(0, 255, (2, 5, 7, 3), dtype=np.uint8)
    planes = LayerPlanes.from_array(stack)
    assert planes.rgb
    assert planes.stack_shape == (2,) and planes.plane_shape == (5, 7)
    np.testing.assert_array_equal(planes.read((1,)), stack[1])
    # told otherwise, the last axis is a spatial one
    assert LayerPlanes.from_array(stack, rgb=False).plane_shape == (7, 3)


def test_from_array_single_plane():
    image = np.zeros((5, 7), np.float32)
    planes = LayerPlanes.from_array(image)
    assert not planes.rgb
    assert planes.stack_shape == () and planes.indices() == [()]
    assert planes.read(()).shape == (5, 7)


def test_from_array_channels_mapped_to_rgb():
    data = np.random.default_rng(0).integers(0, 4000, (4, 5, 7), dtype=np.uint16)
    planes = LayerPlanes.from_array(data, channel_axis=0, channels=[3, 1])
    assert not planes.rgb and planes.stack_shape == ()
    plane = planes.read(())
    np.testing.assert_array_equal(plane[..., 0], data[3])
    np.testing.assert_array_equal(plane[..., 1], data[1])
    assert not plane[..., 2].any()


def test_from_array_bad_input_is_named():
    with pytest.raises(ValueError, match="no last axis of 3 or 4 colours"):
        LayerPlanes.from_array(np.zeros((5, 7)), rgb=True)
    with pytest.raises(ValueError, match="no 2D image plane"):
        LayerPlanes.from_array(np.zeros(7))
    with pytest.raises(ValueError, match="is RGB"):
        LayerPlanes.from_array(np.zeros((5, 7, 3)), rgb=True, channel_axis=0)


def test_from_layer_needs_no_napari_class():
    stack = np.zeros((4, 5, 7), np.uint8)
    layer = SimpleNamespace(data=stack, multiscale=False, rgb=False, ndim=3, name="duck")
    planes = LayerPlanes.from_layer(layer, position=(2.4, 0, 0))
    assert planes.plane == (2,) and planes.name == "duck"
    with pytest.raises(TypeError, match="not an Image"):
        LayerPlanes.from_layer(SimpleNamespace(data=stack, multiscale=False, ndim=3, name="m"))


def test_array_stack_segments_as_its_planes_one_by_one(segmenter):
    stack = np.random.default_rng(0).integers(0, 255, (3, 40, 50), dtype=np.uint8)
    stack[1] = 0
    request = prepare(CLASSES, **REQUEST)
    result = segment_planes(segmenter, LayerPlanes.from_array(stack), request)
    assert result.labels.shape == (3, 40, 50)
    assert result.parameters["n_planes"] == 3
    for z in range(3):
        alone = segmenter.segment(stack[z], request)
        np.testing.assert_array_equal(result.labels[z], alone.labels)
        np.testing.assert_allclose(result.probabilities[:, z], alone.probabilities, atol=1e-6)


class PlaneSpy:
    """An array-like that records what is read from it (for a dask array built on top)."""

    def __init__(self, data):
        self.data = data
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim
        self.reads = []

    def __getitem__(self, key):
        block = self.data[key]
        self.reads.append(block.size)
        return block


def test_dask_stack_is_read_plane_by_plane(segmenter):
    import dask.array as da
    from napari.layers import Image

    spy = PlaneSpy(np.random.default_rng(0).integers(0, 255, (5, 40, 50), dtype=np.uint8))
    layer = Image(da.from_array(spy, chunks=(1, 40, 50)), contrast_limits=(0, 255), name="lazy")
    spy.reads.clear()
    planes = LayerPlanes.from_layer(layer, position="all")
    result = segment_planes(segmenter, planes, prepare(CLASSES, **REQUEST))
    assert result.labels.shape == (5, 40, 50)
    assert spy.reads and max(spy.reads) == 40 * 50  # never more than one plane at a time
    assert sum(spy.reads) == 5 * 40 * 50

"""Sample data: real images that scikit-image ships, each with a suggested class list."""

from __future__ import annotations

import numpy as np
import pytest

from napari_itaclip import _sample_data
from napari_itaclip.engine.classes import parse_class_list

SAMPLES = ["astronaut", "coffee", "chelsea"]


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_is_an_rgb_image_with_valid_suggested_classes(name):
    [(data, kwargs)] = getattr(_sample_data, name)()
    assert data.dtype == np.uint8 and data.ndim == 3 and data.shape[2] == 3
    assert min(data.shape[:2]) >= 256  # a real photograph, not a thumbnail
    assert kwargs["name"] == name and kwargs["rgb"] is True
    classes = parse_class_list(kwargs["metadata"]["itaclip_classes"], background=True)
    assert classes.class_names[0] == "background"
    assert len(classes) >= 2


@pytest.mark.gui
def test_samples_open_through_napari(make_napari_viewer):
    viewer = make_napari_viewer()
    for name in SAMPLES:
        [layer] = viewer.open_sample("napari-itaclip", name)
        assert layer.name == name and layer.rgb
        assert "itaclip_classes" in layer.metadata

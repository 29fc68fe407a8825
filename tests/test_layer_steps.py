"""What the worker does ahead for the GUI thread before the result layers are added."""

from __future__ import annotations

import subprocess
import sys

import pytest

# In the user's order: a viewer first, then a run's worker, then the labels layer.
AHEAD_IN_A_THREAD = """
import sys, threading
import napari, numpy as np
viewer = napari.Viewer(show=False)
from napari_itaclip._layer_steps import prepare_layer_building
if sys.argv[1] == "prepared":
    thread = threading.Thread(target=prepare_layer_building)
    thread.start(); thread.join()
from vispy.visuals.line.dash_atlas import _make_pattern
imported, patterns = set(sys.modules), _make_pattern.cache_info().misses
viewer.add_labels(np.zeros((8, 8), np.uint8), features={"class": ["a"]})
print("imported", len(set(sys.modules) - imported),
      "patterns", _make_pattern.cache_info().misses - patterns)
viewer.close()
"""


@pytest.mark.parametrize("how", ["prepared", "unprepared"])
def test_layer_building_prepared_in_a_worker_leaves_the_gui_thread_less_to_do(how):
    done = subprocess.run(
        [sys.executable, "-c", AHEAD_IN_A_THREAD, how], capture_output=True, text=True, check=True
    )
    words = done.stdout.split()
    imported, patterns = int(words[1]), int(words[3])
    if how == "prepared":
        assert imported == 0 and patterns == 0  # nothing left to import or compute
    else:  # what the preparation saves the GUI thread (pandas, skimage, dash patterns)
        assert imported > 100 and patterns >= 13

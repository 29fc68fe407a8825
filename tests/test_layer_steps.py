"""What the worker does ahead for the GUI thread before the result layers are added."""

from __future__ import annotations

import subprocess
import sys

AHEAD_IN_A_THREAD = """
import sys, threading
from napari_itaclip._layer_steps import prepare_layer_building
assert "pandas" not in sys.modules
thread = threading.Thread(target=prepare_layer_building)
thread.start(); thread.join()
from vispy.visuals.line.dash_atlas import DashAtlas, _make_pattern
before = _make_pattern.cache_info()
DashAtlas()  # what a labels layer's polygon overlay builds on the GUI thread
after = _make_pattern.cache_info()
print("pandas", "pandas" in sys.modules, "new patterns", after.misses - before.misses,
      "reused", after.hits - before.hits)
"""


def test_layer_building_prepared_in_a_worker_leaves_the_gui_thread_nothing_to_compute():
    done = subprocess.run(
        [sys.executable, "-c", AHEAD_IN_A_THREAD], capture_output=True, text=True, check=True
    )
    words = done.stdout.split()
    assert words[1] == "True"  # pandas imported by the worker
    assert int(words[4]) == 0 and int(words[6]) >= 13  # every dash pattern already computed

#!/usr/bin/env bash
# The README's install command in a brand-new virtual environment, then a real napari window
# with the plugin's dock widget under the X server: the first thing a new user does.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(mktemp -d)/venv
python -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
# README: pip install torch==2.14.1 torchvision==0.29.1 && pip install -e ".[napari]"
"$venv/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
"$venv/bin/python" -m pip install -q -e ".[napari]"
xvfb-run -a "$venv/bin/python" - <<'PY'
import napari
from qtpy.QtWidgets import QApplication

viewer = napari.Viewer(show=True)
_, widget = viewer.window.add_plugin_dock_widget("napari-itaclip", "ITACLIP segmentation")
QApplication.processEvents()
assert widget.isVisible(), "the dock widget is not shown"
print("fresh venv: napari", napari.__version__, "opened with the ITACLIP widget")
viewer.close()
PY
rm -rf "$(dirname "$venv")"

"""Make the screenshots of docs/napari.md and the README.

    xvfb-run -a python docs/screenshots.py docs/images

Uses the tests' tiny random CLIP (no download), so the segmentation shown is noise: the
pictures are about the widget and the layers, not about quality. The first run's download is
simulated (the progress hook is fed 600 MB in steps) and so is the offline error.
"""

import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(out: Path) -> None:
    import os

    settings = Path(tempfile.mkdtemp()) / "settings.json"
    os.environ["NAPARI_ITACLIP_SETTINGS"] = str(settings)  # start from the defaults
    sys.path.insert(0, str(HERE.parent / "tests"))
    import napari
    from qtpy.QtWidgets import QApplication
    from superqt import QCollapsible

    from conftest import build_tiny_clip
    from napari_itaclip import ITACLIP
    from napari_itaclip.engine import WeightsUnavailableError

    segmenter = ITACLIP.from_open_clip(build_tiny_clip(), device="cpu", cache_dir=False)
    viewer = napari.Viewer()
    viewer.window._qt_window.resize(1500, 1000)
    viewer.open_sample("napari-itaclip", "astronaut")
    _, widget = viewer.window.add_plugin_dock_widget("napari-itaclip", "ITACLIP segmentation")
    app = QApplication.instance()
    total = 599 * 2**20

    def first_download(*key, progress=None):
        # A first run: the weights "download" (stopping at 40% for the picture), then load.
        for step in range(1, 11):
            progress(step * total // 25, total, "download")
            time.sleep(0.05)
        time.sleep(1.5)
        return segmenter

    def offline(*key, progress=None):
        raise WeightsUnavailableError("offline (simulated for the screenshot)")

    def settle(seconds: float = 1.0) -> None:
        end = time.time() + seconds
        while time.time() < end:
            app.processEvents()
            time.sleep(0.01)

    settle()
    widget.image.value = viewer.layers["astronaut"]
    widget.preset.value = "fast"
    settle()
    viewer.screenshot(str(out / "widget.png"), canvas_only=False)
    advanced = widget.findChildren(QCollapsible)[0]
    advanced.expand(animate=False)
    settle()
    viewer.screenshot(str(out / "advanced.png"), canvas_only=False)
    advanced.collapse(animate=False)
    widget.segmenter_factory = first_download
    widget.run()
    settle(0.9)
    viewer.screenshot(str(out / "download.png"), canvas_only=False)
    while widget.running:
        app.processEvents()
        time.sleep(0.01)
    viewer.layers.selection.active = viewer.layers["astronaut labels"]
    settle()
    viewer.screenshot(str(out / "viewer.png"), canvas_only=False)
    widget.segmenter_factory = offline
    widget.run()
    settle(1.5)
    viewer.screenshot(str(out / "offline.png"), canvas_only=False)
    viewer.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "images")

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
    annotation_loop(viewer, widget, segmenter, out, settle)
    viewer.close()


def two_colour_image():
    """A reddish blob on a bluish ground, with noise: the colours decide, not the names."""
    import numpy as np

    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:240, :320]
    blob = (rows - 120) ** 2 / 90**2 + (cols - 130) ** 2 / 110**2 + 0.2 * np.sin(cols / 9) < 1
    image = np.where(blob[..., None], (200, 60, 50), (40, 70, 200)).astype(np.int16)
    return np.clip(image + rng.integers(-25, 25, image.shape), 0, 255).astype(np.uint8), blob


# Short strokes inside the blob (class 0, value 1) and on the ground (class 1, value 2).
STROKES = (
    (slice(90, 98), slice(80, 170), 1),
    (slice(150, 158), slice(60, 150), 1),
    (slice(25, 33), slice(240, 300), 2),
    (slice(205, 213), slice(180, 290), 2),
)


def _image_part(shot) -> tuple[slice, slice]:
    """Where the screenshot is not the canvas's black."""
    import numpy as np

    rows, cols = np.nonzero(shot[..., :3].max(-1) > 10)
    return slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)


def annotation_loop(viewer, widget, segmenter, out: Path, settle) -> None:
    """docs/napari.md, "The annotation loop": the text-only result, a few strokes in an
    examples layer, the refinement; side by side in loop.png."""
    import numpy as np
    from PIL import Image, ImageDraw

    viewer.layers.clear()
    image, _ = two_colour_image()
    layer = viewer.add_image(image, name="blobs")
    widget.segmenter_factory = lambda *key, progress=None: segmenter
    widget.image.value = layer
    widget.classes.value = "thing one\nthing two"  # names that say nothing to a random model
    widget.preset.value = "voc21"
    settings = {"short_side": 64, "crop": 32, "stride": 16, "examples_weight": 20}
    for name, value in {**settings, "background": False}.items():
        getattr(widget, name).value = value
    widget.run()
    while widget.running:
        settle(0.1)
    labels = viewer.layers["blobs labels"]
    viewer.reset_view()
    settle()
    shots = [viewer.screenshot(canvas_only=True)]
    strokes = widget.refine_panel.add_strokes_layer()
    for rows, cols, value in STROKES:  # value = class id + 1
        mask = np.zeros(strokes.data.shape, bool)
        mask[rows, cols] = True
        strokes.data_setitem(np.nonzero(mask), value)
    strokes.mode = "pan_zoom"  # no brush cursor in the picture
    labels.visible = False
    viewer.reset_view()
    settle()
    shots.append(viewer.screenshot(canvas_only=True))
    widget.refine()
    while widget.running:
        settle(0.1)
    labels.visible, strokes.visible = True, False
    viewer.reset_view()
    settle()
    shots.append(viewer.screenshot(canvas_only=True))
    rows, cols = _image_part(shots[0])
    shots = [shot[rows, cols] for shot in shots]
    pictures = [Image.fromarray(shot[..., :3]) for shot in shots]
    width, height = pictures[0].size
    loop = Image.new("RGB", (3 * width, height + 30), "white")
    draw = ImageDraw.Draw(loop)
    captions = ("1. Run: text only", "2. strokes in an examples layer", "3. Refine from edits")
    for index, (picture, caption) in enumerate(zip(pictures, captions, strict=True)):
        loop.paste(picture, (index * width, 30))
        draw.text((index * width + 10, 8), caption, fill="black")
    loop.save(out / "loop.png")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "images")

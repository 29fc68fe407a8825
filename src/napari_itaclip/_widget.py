"""The "ITACLIP segmentation" dock widget: controls over `planes.segment_planes`, run in a worker.

The widget only gathers values, starts a napari worker thread (the model comes from the
shared `segmenters.SEGMENTERS`) and adds the result layers with `viewer.add_result_layers`;
the segmentation itself is the engine's `ITACLIP.segment`.
Settings persist through `_settings` (JSON in the user config folder).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    TextEdit,
)
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFileDialog, QSizePolicy, QVBoxLayout, QWidget
from superqt import QCollapsible
from superqt.utils import ensure_main_thread

from ._controls import edits, integers, parameter_control, parameter_value, shown_value
from ._settings import load_settings, save_settings
from .engine import (
    BUILTIN_CLASS_SETS,
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    PARAMETERS,
    PRECISIONS,
    PRESETS,
    Cancelled,
    Request,
    builtin_class_set,
    device_choices,
    prepare,
)
from .planes import LayerPlanes, current_position, segment_planes
from .segmenters import SEGMENTERS, load_segmenter
from .viewer import add_result_layers_in_steps

logger = logging.getLogger(__name__)

CUSTOM = "custom"
CURRENT_PLANE, ALL_PLANES = "current plane", "all planes"
BUILTIN_PLACEHOLDER = "insert a built-in class set..."
# Parameters shown beside the class box ("first line is background") and the aux file (its
# weight); every other parameter is in "Advanced parameters".
BESIDE_CLASSES = ("background", "c_def")
ADVANCED_PARAMETERS = tuple(name for name in PARAMETERS if name not in BESIDE_CLASSES)
# The class list decides `background`, so picking a preset never changes it.
FROM_PRESET = tuple(name for name in PARAMETERS if name != "background")
DEFAULT_CLASSES = "background\nperson\ncat\ndog"
PROGRESS_INTERVAL = 0.25
READY = "ready"
RUN_TOOLTIP = "Segment the image into the classes with these parameters"


@dataclass
class _Job:
    """Everything one run needs, gathered on the GUI thread before the worker starts."""

    layer: Image
    planes: LayerPlanes
    request: Request
    model_key: tuple
    cancel: Callable[[], bool] = lambda: False  # set to the worker's abort flag


class SegmentationWidget(QWidget):
    """Dock widget: image, classes, preset and parameters, model and device, Run/Cancel."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        # Replaced in tests by a function returning a ready (tiny) ITACLIP. With the default,
        # the widget and `segment_layer` share one loaded model (segmenters.SEGMENTERS).
        self.segmenter_factory = load_segmenter
        self._worker = None
        self._adding = None  # the steps adding a finished run's layers, while they run
        self._filling = False  # True while the widget sets values itself (no "custom", no save)
        self._base_preset = "fast"
        # The class box text that picking an image may replace with that image's suggestion.
        self._suggested_classes = DEFAULT_CLASSES
        self._last_progress = (0.0, "")  # (time, stage) of the last progress shown
        self._started = 0.0

        self.image = ComboBox(label="image", choices=self._image_choices)
        self.planes = ComboBox(label="planes", choices=[CURRENT_PLANE, ALL_PLANES])
        self.channel_axis = ComboBox(label="channel axis", choices=self._channel_axis_choices)
        self.channels = LineEdit(
            label="channels → RGB", value="0, 1, 2",
            tooltip="Up to 3 channel indices of the channel axis, mapped to R, G, B",
        )  # fmt: skip
        inputs = Container(widgets=[self.image, self.planes, self.channel_axis, self.channels])

        self.classes = TextEdit(
            label="classes", value=DEFAULT_CLASSES,
            tooltip="One class per line; ', ' separates variants (synonyms) of one class",
        )  # fmt: skip
        self.parameter_controls = {name: parameter_control(p) for name, p in PARAMETERS.items()}
        for name, control in self.parameter_controls.items():
            setattr(self, name, control)  # self.short_side, self.background, ...
        self.background.value = True  # DEFAULT_CLASSES starts with background words
        # What is wrong with the classes, aux text or parameters, checked as they change.
        self.request_problem = Label(value="", visible=False)
        self.request_problem.native.setWordWrap(True)
        self.request_problem.native.setStyleSheet("color: #e0524c")
        self.builtin = ComboBox(
            label="built-in", choices=[BUILTIN_PLACEHOLDER, *BUILTIN_CLASS_SETS]
        )
        self.load_classes = PushButton(text="Load list...")
        self.save_classes = PushButton(text="Save list...")
        class_files = Container(
            widgets=[self.load_classes, self.save_classes], layout="horizontal", labels=False
        )
        classes = Container(
            widgets=[self.classes, self.request_problem, self.background, self.builtin, class_files]
        )

        self.preset = ComboBox(label="preset", choices=[*PRESETS, CUSTOM], value=self._base_preset)
        self.aux_file = FileEdit(
            label="aux text", mode="r", filter="*.txt", nullable=True,
            tooltip="Definitions or synonyms: one 'name >=text' line per class",
        )  # fmt: skip
        self.device = ComboBox(label="device", choices=["auto", *device_choices()])
        parameters = Container(widgets=[self.preset, self.aux_file, self.c_def, self.device])

        advanced = Container(widgets=[self.parameter_controls[n] for n in ADVANCED_PARAMETERS])

        self.model = LineEdit(label="model", value=DEFAULT_MODEL)
        self.pretrained = LineEdit(label="pretrained", value=DEFAULT_PRETRAINED)
        self.weights = FileEdit(
            label="weights file", mode="r", nullable=True,
            tooltip="A local weights file; when set it replaces the pretrained tag",
        )  # fmt: skip
        self.precision = ComboBox(
            label="precision", choices=list(PRECISIONS), value="auto",
            tooltip="auto: fp16 autocast on CUDA, fp32 elsewhere",
        )  # fmt: skip
        model = Container(widgets=[self.model, self.pretrained, self.weights, self.precision])

        self.run_button = PushButton(text="Run", tooltip=RUN_TOOLTIP)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        # Never empty, and ignoring their text width: changing text must not resize the dock,
        # since a resize redraws the whole canvas (the main cost to the GUI during a run).
        self.stage = Label(value=READY)
        self.last_run = Label(value="last run: none yet")
        for label in (self.stage, self.last_run):
            label.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        buttons = Container(
            widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False
        )
        run = Container(widgets=[buttons, self.progress, self.stage, self.last_run])

        self._containers = (inputs, classes, parameters, advanced, model, run)
        layout = QVBoxLayout(self)
        for part in (inputs, classes, parameters):
            layout.addWidget(part.native)
        for title, part in (("Advanced parameters", advanced), ("Model", model)):
            collapsible = QCollapsible(title)
            collapsible.addWidget(part.native)
            layout.addWidget(collapsible)
        layout.addWidget(run.native)
        layout.addStretch()

        self._fill_preset(self._base_preset)
        self._restore_settings()
        self._connect()
        self._on_image_changed(self.image.value)
        self._check_request()

    # ------------------------------------------------------------------------ wiring
    @property
    def _persisted(self) -> dict:
        """The widgets whose values persist, by settings key (= attribute or parameter name)."""
        names = (
            "planes", "channels", "classes", "preset", "aux_file", "device", "model",
            "pretrained", "weights", "precision",
        )  # fmt: skip
        return {**{name: getattr(self, name) for name in names}, **self.parameter_controls}

    def _connect(self):
        self.image.changed.connect(self._on_image_changed)
        self.channel_axis.changed.connect(self._update_input_controls)
        self.builtin.changed.connect(self._on_builtin)
        self.load_classes.changed.connect(self._ask_load_classes)
        self.save_classes.changed.connect(self._ask_save_classes)
        self.preset.changed.connect(self._on_preset)
        for control in self.parameter_controls.values():
            control.changed.connect(self._on_parameter_edited)
        for control in (
            self.classes,
            self.aux_file,
            self.preset,
            *self.parameter_controls.values(),
        ):
            edits(control).connect(self._check_request)
        for widget in self._persisted.values():
            edits(widget).connect(self._save_settings)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)

    def reset_choices(self, *_):
        """Follow the viewer's layers (napari calls this on insert/remove/reorder/rename)."""
        for part in self._containers:
            part.reset_choices()
        self._update_input_controls()

    def _image_choices(self, _widget):
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _channel_axis_choices(self, _widget):
        layer = self.image.value
        choices = [("none (RGB or grey)", None)]
        if layer is not None and not layer.rgb and layer.ndim >= 3:
            shape = layer.data[0].shape if layer.multiscale else layer.data.shape
            choices += [(f"axis {axis} ({shape[axis]})", axis) for axis in range(layer.ndim)]
        return choices

    def _update_input_controls(self):
        layer = self.image.value
        self.channel_axis.reset_choices()
        multichannel = layer is not None and not layer.rgb and layer.ndim >= 3
        self.channel_axis.visible = multichannel
        self.channels.visible = multichannel and self.channel_axis.value is not None
        if layer is None:
            self.planes.visible = False
            return
        image_axes = layer.ndim - (self.channel_axis.value is not None)
        self.planes.visible = image_axes > 2

    def _on_image_changed(self, layer):
        self.channel_axis.value = None
        self._update_input_controls()
        suggestion = None if layer is None else layer.metadata.get("itaclip_classes")
        current = self.classes.value.strip()
        if suggestion and (not current or current == self._suggested_classes):
            self.classes.value = suggestion
            self._suggested_classes = suggestion.strip()

    # ----------------------------------------------------------------------- classes
    def _on_builtin(self, name):
        if name == BUILTIN_PLACEHOLDER:
            return
        self.classes.value = builtin_class_set(name)
        self.background.value = PRESETS[name].background
        self.builtin.value = BUILTIN_PLACEHOLDER

    def load_class_file(self, path):
        """Put the classes of a class-list file (one class per line) in the class box."""
        self.classes.value = Path(path).read_text(encoding="utf-8").strip()

    def save_class_file(self, path):
        Path(path).write_text(self.classes.value.strip() + "\n", encoding="utf-8")

    def _ask_load_classes(self):
        path, _ = QFileDialog.getOpenFileName(self, "Load class list", "", "Text (*.txt);;All (*)")
        if path:
            try:
                self.load_class_file(path)
            except (OSError, UnicodeDecodeError) as exc:
                show_error(f"ITACLIP: cannot read {path}: {exc}")

    def _ask_save_classes(self):
        path, _ = QFileDialog.getSaveFileName(self, "Save class list", "", "Text (*.txt)")
        if path:
            try:
                self.save_class_file(path)
            except OSError as exc:
                show_error(f"ITACLIP: cannot write {path}: {exc}")

    # ------------------------------------------------------------------- parameters
    def _fill_preset(self, name: str):
        self._filling = True
        try:
            for field, value in self._preset_values(name).items():
                self.parameter_controls[field].value = shown_value(PARAMETERS[field], value)
        finally:
            self._filling = False

    def _on_preset(self, name):
        if self._filling or name == CUSTOM:
            return
        self._base_preset = name
        self._fill_preset(name)
        self._save_settings()

    def _on_parameter_edited(self):
        if self._filling or self.preset.value == CUSTOM:
            return
        try:
            shown = self.overrides()
        except ValueError:  # a half-typed list of integers is no preset's
            shown = {}
        preset = self._preset_values(self.preset.value)
        if any(shown.get(field) != value for field, value in preset.items()):
            self._filling = True
            try:
                self.preset.value = CUSTOM
            finally:
                self._filling = False

    @staticmethod
    def _preset_values(name: str) -> dict:
        return {field: getattr(PRESETS[name], field) for field in FROM_PRESET}

    def overrides(self) -> dict:
        """Every parameter's value as shown, as `prepare` overrides (an optional 0 = None)."""
        return {
            name: parameter_value(p, self.parameter_controls[name].value)
            for name, p in PARAMETERS.items()
        }

    def request(self) -> Request:
        """The classes, aux text and parameters shown, checked by `prepare`.

        Raises ValueError or TypeError naming the problem; no model is needed.
        """
        preset = self._base_preset if self.preset.value == CUSTOM else self.preset.value
        return prepare(
            self.classes.value, preset=preset, aux_text=self.aux_file.value, **self.overrides()
        )

    def _check_request(self, *_):
        """Show what is wrong with the request under the class box and on Run, as it changes."""
        try:
            self.request()
        except (ValueError, TypeError) as exc:
            problem = str(exc)
        else:
            problem = ""
        self.request_problem.value = problem
        self.request_problem.visible = bool(problem)
        self.run_button.tooltip = problem or RUN_TOOLTIP

    # --------------------------------------------------------------------- settings
    def _save_settings(self, *_):
        if self._filling:
            return
        settings = {key: _jsonable(widget.value) for key, widget in self._persisted.items()}
        save_settings({**settings, "base_preset": self._base_preset})

    def _restore_settings(self):
        settings = load_settings()
        if settings.get("base_preset") in PRESETS:
            self._base_preset = settings["base_preset"]
            self._fill_preset(self._base_preset)
        self._filling = True
        try:
            for key, widget in self._persisted.items():
                if key in settings:
                    try:
                        widget.value = settings[key]
                    except (ValueError, TypeError):
                        logger.info("ignoring saved %s=%r", key, settings[key])
        finally:
            self._filling = False

    # --------------------------------------------------------------------------- run
    @property
    def running(self) -> bool:
        """A run is computing, or its layers are still being added."""
        return self._worker is not None or self._adding is not None

    def _job(self) -> _Job:
        layer = self.image.value
        if layer is None:
            raise ValueError("no image layer: open an image first")
        channel_axis = self.channel_axis.value
        channels = None
        if channel_axis is not None:
            channels = list(
                integers(self.channels.value, "channels must be up to 3 integers such as '0, 1, 2'")
            )
        position = (
            current_position(self.viewer, layer) if self.planes.value == CURRENT_PLANE else "all"
        )
        planes = LayerPlanes.from_layer(
            layer, channel_axis=channel_axis, channels=channels, position=position
        )
        request = self.request()  # checked here, before any model loads
        pretrained = (
            str(self.weights.value) if self.weights.value else self.pretrained.value.strip()
        )
        model_key = (self.model.value.strip(), pretrained, self.device.value, self.precision.value)
        return _Job(layer, planes, request, model_key)

    def run(self):
        """Start a run in a worker thread and return the worker (None if refused)."""
        if self.running:
            show_warning("ITACLIP: a segmentation is already running; wait for it or press Cancel.")
            return None
        try:
            job = self._job()
        except (ValueError, TypeError) as exc:
            show_error(f"ITACLIP: {exc}")
            return None
        worker = create_worker(self._work, job, _start_thread=False, _ignore_errors=True)
        job.cancel = lambda: worker.abort_requested
        worker.returned.connect(lambda result: self._on_returned(job, result))
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._started = time.perf_counter()
        self.cancel_button.enabled = True
        self._show_progress(0, 1, "starting")
        worker.start()
        return worker

    def cancel(self):
        """Ask the running worker to stop; the engine stops at its next chunk."""
        if self._worker is not None:
            self._worker.quit()
            self.stage.value = "cancelling..."

    def _work(self, job: _Job):
        """Worker thread: get the model (loaded only if the key changed), then segment."""
        # napari builds the labels layer's features table with pandas: imported here, in the
        # worker, its ~300 modules do not load on the GUI thread when the layers are added.
        import pandas  # noqa: F401

        model, pretrained = job.model_key[:2]
        segmenter = SEGMENTERS.get(
            job.model_key,
            self.segmenter_factory,
            loading=lambda: self._show_progress(0, 1, f"loading model {model} / {pretrained}"),
        )
        return segment_planes(
            segmenter,
            job.planes,
            job.request,
            progress=self._show_progress,
            cancel=job.cancel,
        )

    @ensure_main_thread
    def _show_progress(self, done: int, total: int, stage: str):
        # Every repaint recomposes the whole window (the canvas is an OpenGL widget), which is
        # slow with software OpenGL: within a stage, show one update per PROGRESS_INTERVAL s.
        now = time.perf_counter()
        last_time, last_stage = self._last_progress
        if stage == last_stage and now - last_time < PROGRESS_INTERVAL:
            return
        self._last_progress = (now, stage)
        self.progress.max = max(total, 1)
        self.progress.value = min(done, total)
        self.stage.value = f"{stage} {done}/{total}" if total > 1 else stage

    def _on_returned(self, job: _Job, result):
        # One layer per event-loop turn: adding them all at once froze napari for a second.
        self._adding = add_result_layers_in_steps(self.viewer, result, job.layer)
        self._add_next_layer(result.parameters["n_planes"])

    def _add_next_layer(self, planes: int):
        try:
            next(self._adding)
        except StopIteration:
            self._adding = None
            seconds = time.perf_counter() - self._started
            self.last_run.value = f"last run: {seconds:.1f} s" + (
                f" ({planes} planes)" if planes > 1 else ""
            )
        except Exception as exc:  # a result that cannot become layers must not kill napari
            self._adding = None
            logger.exception("adding the result layers failed")
            show_error(f"ITACLIP: could not add the result layers: {exc}")
        else:
            QTimer.singleShot(0, lambda: self._add_next_layer(planes))

    def _on_errored(self, exc: Exception):
        if isinstance(exc, Cancelled):
            show_info("ITACLIP: run cancelled; no layer was added.")
        elif isinstance(exc, (ValueError, TypeError)):
            show_error(f"ITACLIP: {exc}")
        else:
            logger.error("ITACLIP run failed", exc_info=exc)
            show_error(f"ITACLIP failed ({type(exc).__name__}): {exc}")

    def _on_finished(self):
        self._worker = None
        self.cancel_button.enabled = False
        self.progress.value = 0
        self.stage.value = READY


def _jsonable(value):
    return str(value) if isinstance(value, Path) else value

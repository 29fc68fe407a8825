"""The "ITACLIP segmentation" dock widget: controls over `planes.segment_planes`, run in a worker.

The widget composes its parts: the class box (`_class_panel`), the preset and parameter
controls (`_controls.ParameterPanel`), the model and input controls, and Run/Cancel with the
progress line (`_run_progress`). It starts a napari worker thread (the model comes from the
shared `segmenters.SEGMENTERS`) and adds the result layers with `viewer`'s layer policy; the
segmentation itself is the engine's `ITACLIP.segment`. Settings persist through `_settings`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from magicgui.widgets import ComboBox, Container, FileEdit, LineEdit
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QVBoxLayout, QWidget
from superqt import QCollapsible

from ._class_panel import BUILTIN_PLACEHOLDER, ClassPanel, remember_run_classes
from ._controls import CUSTOM, DEFAULT_PRESET, ParameterPanel, edits, integers
from ._run_panel import RUN_TOOLTIP, RunPanel, report_failure
from ._settings import load_settings, save_settings
from .engine import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    PARAMETERS,
    PRECISIONS,
    PRESETS,
    Request,
    device_choices,
    prepare,
)
from .planes import LayerPlanes, current_position, segment_planes
from .segmenters import SEGMENTERS, load_segmenter
from .viewer import add_result_layers_in_steps, show_probability

__all__ = [
    "BUILTIN_PLACEHOLDER", "CUSTOM", "DEFAULT_CLASSES", "RUN_TOOLTIP", "SegmentationWidget",
]  # fmt: skip

logger = logging.getLogger(__name__)

CURRENT_PLANE, ALL_PLANES = "current plane", "all planes"
# Parameters shown beside the class box ("first line is background") and the aux file (its
# weight); every other parameter is in "Advanced parameters".
BESIDE_CLASSES = ("background", "c_def")
ADVANCED_PARAMETERS = tuple(name for name in PARAMETERS if name not in BESIDE_CLASSES)
# The default list is numbered as the default preset says: a background line only with one.
DEFAULT_CLASSES = (
    "background\n" if PRESETS[DEFAULT_PRESET].background else ""
) + "person\ncat\ndog"


@dataclass
class _Job:
    """Everything one run needs, gathered on the GUI thread before the worker starts."""

    layer: Image
    planes: LayerPlanes
    request: Request
    classes: str  # the class box's text, remembered on the image after the run
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
        self._restoring = False  # True while saved settings are put back (nothing to save)
        self._started = 0.0

        self.image = ComboBox(label="image", choices=self._image_choices)
        self.planes = ComboBox(label="planes", choices=[CURRENT_PLANE, ALL_PLANES])
        self.channel_axis = ComboBox(label="channel axis", choices=self._channel_axis_choices)
        self.channels = LineEdit(
            label="channels → RGB", value="0, 1, 2",
            tooltip="Up to 3 channel indices of the channel axis, mapped to R, G, B",
        )  # fmt: skip
        inputs = Container(widgets=[self.image, self.planes, self.channel_axis, self.channels])

        self.parameter_panel = ParameterPanel(DEFAULT_PRESET)
        self.parameter_controls = self.parameter_panel.controls
        for name, control in self.parameter_controls.items():
            setattr(self, name, control)  # self.short_side, self.background, ...
        self.preset = self.parameter_panel.preset
        self.class_panel = ClassPanel(self.background, DEFAULT_CLASSES)
        self.classes = self.class_panel.classes
        self.request_problem = self.class_panel.problem
        self.builtin = self.class_panel.builtin
        self.load_classes = self.class_panel.load_classes
        self.save_classes = self.class_panel.save_classes

        self.aux_file = FileEdit(
            label="aux text", mode="r", filter="*.txt", nullable=True,
            tooltip="Definitions or synonyms: one 'name >=text' line per class",
        )  # fmt: skip
        self.device = ComboBox(label="device", choices=["auto", *device_choices()])
        parameters = Container(widgets=[self.preset, self.aux_file, self.c_def, self.device])
        advanced = Container(widgets=[self.parameter_controls[n] for n in ADVANCED_PARAMETERS])
        model = self._model_controls()
        self.run_panel = RunPanel()
        run = self.run_panel.container
        for name in ("run_button", "cancel_button", "show_probability", "progress", "stage"):
            setattr(self, name, getattr(self.run_panel, name))
        self.last_run = self.run_panel.last_run
        self._show_progress = self.run_panel.show_progress

        self._containers = (inputs, self.class_panel.container, parameters, advanced, model, run)
        layout = QVBoxLayout(self)
        for part in (inputs, self.class_panel.container, parameters):
            layout.addWidget(part.native)
        self.sections = {}
        for title, part in (("Advanced parameters", advanced), ("Model", model)):
            self.sections[title] = QCollapsible(title)
            self.sections[title].addWidget(part.native)
            layout.addWidget(self.sections[title])
        layout.addWidget(run.native)
        layout.addStretch()

        self._restore_settings()
        self._connect()
        self._on_image_changed(self.image.value)
        self._show_background_rule()
        self._check_request()

    def _model_controls(self) -> Container:
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
        return Container(widgets=[self.model, self.pretrained, self.weights, self.precision])

    # ------------------------------------------------------------------------ wiring
    @property
    def _persisted(self) -> dict:
        """The widgets whose values persist, by settings key (= attribute or parameter name).
        The class box is saved apart: its typed list, not another image's suggestion."""
        names = (
            "planes", "channels", "preset", "aux_file", "device", "model", "pretrained",
            "weights", "precision",
        )  # fmt: skip
        return {**{name: getattr(self, name) for name in names}, **self.parameter_controls}

    def _connect(self):
        self.image.changed.connect(self._on_image_changed)
        self.channel_axis.changed.connect(self._update_input_controls)
        self.show_probability.changed.connect(self._on_show_probability)
        for control in (self.preset, self.background):
            control.changed.connect(self._show_background_rule)
        for control in (
            self.classes,
            self.aux_file,
            self.preset,
            *self.parameter_controls.values(),
        ):
            edits(control).connect(self._check_request)
        for widget in (self.classes, *self._persisted.values()):
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
        self.class_panel.show_for(layer)

    def _show_background_rule(self, *_):
        """Say under the class box whether line 0 is background, and what decided it."""
        panel = self.parameter_panel
        origin = "custom" if panel.preset.value == CUSTOM else f"preset {panel.preset_name}"
        self.class_panel.show_background(self.background.value, origin)

    def _on_show_probability(self, *_):
        layer = self.image.value
        if layer is not None:
            show_probability(self.viewer, layer.name, self.run_panel.shown_probability)

    # ------------------------------------------------------------------- parameters
    def overrides(self) -> dict:
        """Every parameter's value as shown, as `prepare` overrides (an optional 0 = None)."""
        return self.parameter_panel.values()

    def request(self) -> Request:
        """The classes, aux text and parameters shown, checked by `prepare`.

        Raises ValueError or TypeError naming the problem; no model is needed.
        """
        return prepare(
            self.classes.value,
            preset=self.parameter_panel.preset_name,
            aux_text=self.aux_file.value,
            **self.overrides(),
        )

    def _check_request(self, *_):
        """Show what is wrong with the request under the class box and on Run, as it changes;
        offer the request's classes in "show probability of"."""
        try:
            names = self.request().class_names
        except (ValueError, TypeError) as exc:
            problem = str(exc)
        else:
            problem = ""
            self.run_panel.offer_classes(names)
        self.class_panel.show_problem(problem)
        self.run_panel.show_problem(problem)

    # --------------------------------------------------------------------- settings
    def _save_settings(self, *_):
        if self._restoring or self.parameter_panel.filling:
            return
        settings = {key: _jsonable(widget.value) for key, widget in self._persisted.items()}
        save_settings(
            {
                **settings,
                "classes": self.class_panel.typed,
                "base_preset": self.parameter_panel.base_preset,
            }
        )

    def _restore_settings(self):
        settings = load_settings()
        if settings.get("base_preset") in PRESETS:
            self.parameter_panel.fill(settings["base_preset"])
        if isinstance(settings.get("classes"), str):
            self.class_panel.typed = settings["classes"]
        self._restoring = True
        try:
            with self.parameter_panel.quiet():
                for key, widget in self._persisted.items():
                    if key in settings:
                        try:
                            widget.value = settings[key]
                        except (ValueError, TypeError):
                            logger.info("ignoring saved %s=%r", key, settings[key])
        finally:
            self._restoring = False

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
        return _Job(layer, planes, request, self.classes.value, model_key)

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
        self.run_panel.started()
        worker.start()
        return worker

    def cancel(self):
        """Ask the running worker to stop (the engine stops at its next chunk); from now on
        the line says "cancelling..." and late progress events are ignored."""
        if self._worker is not None:
            self._worker.quit()
            self.run_panel.cancelling()

    def _work(self, job: _Job):
        """Worker thread: get the model (loaded only if the key changed), then segment."""
        # napari builds the labels layer's features table with pandas: imported here, in the
        # worker, its ~300 modules do not load on the GUI thread when the layers are added.
        import pandas  # noqa: F401

        segmenter = SEGMENTERS.get(
            job.model_key,
            self.segmenter_factory,
            loading=lambda: self.run_panel.show_loading(*job.model_key[:2]),
            progress=self.run_panel.show_progress,
        )
        return segment_planes(
            segmenter,
            job.planes,
            job.request,
            progress=self.run_panel.show_progress,
            cancel=job.cancel,
        )

    def _on_returned(self, job: _Job, result):
        remember_run_classes(job.layer, job.classes)
        if self.image.value is job.layer:
            self.class_panel.show_for(job.layer)
        # One layer per event-loop turn: adding them all at once froze napari for a second.
        self._adding = add_result_layers_in_steps(
            self.viewer, result, job.layer, show_probability=self.run_panel.shown_probability
        )
        self._add_next_layer(result.parameters["n_planes"])

    def _add_next_layer(self, planes: int):
        try:
            next(self._adding)
        except StopIteration:
            self._adding = None
            self.run_panel.ran(time.perf_counter() - self._started, planes)
        except Exception as exc:  # a result that cannot become layers must not kill napari
            self._adding = None
            logger.exception("adding the result layers failed")
            show_error(f"ITACLIP: could not add the result layers: {exc}")
        else:
            QTimer.singleShot(0, lambda: self._add_next_layer(planes))

    def _on_errored(self, exc: Exception):
        report_failure(exc, lambda: self.sections["Model"].expand(animate=False))

    def _on_finished(self):
        self._worker = None
        self.run_panel.finished()


def _jsonable(value):
    return str(value) if isinstance(value, Path) else value

"""The "ITACLIP segmentation" dock widget: controls over `planes.segment_planes`, run in a worker.

The widget composes its parts: the inputs (`_input_panel`), the class box (`_class_panel`),
the preset and parameter controls (`_controls.ParameterPanel`), the model controls, Run/Cancel
with the progress line (`_run_panel`) and "Refine from edits" (`_refine_panel`). It starts a
napari worker thread (the model comes from the shared `segmenters.SEGMENTERS`, which keeps the
features of recent images, so a re-run is instant) and puts the result into layers with
`viewer`'s layer policy: a preview first when the run makes one, then the result, in place.
The segmentation itself is the engine's `ITACLIP.segment`. Settings persist through `_settings`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from magicgui.widgets import ComboBox, Container, FileEdit
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QVBoxLayout, QWidget
from superqt import QCollapsible
from superqt.utils import ensure_main_thread

from ._class_panel import BUILTIN_PLACEHOLDER, ClassPanel, remember_run_classes
from ._controls import CUSTOM, DEFAULT_PRESET, ParameterPanel, edits
from ._input_panel import ALL_PLANES, CURRENT_PLANE, InputPanel, ModelPanel
from ._layer_steps import LayerSteps, prepare_layer_building
from ._refine_panel import RefineJob, RefinePanel
from ._run_panel import RUN_TOOLTIP, RunPanel, report_failure
from ._settings import load_settings, save_settings
from .corrections import refine_planes
from .engine import (
    PARAMETERS,
    PRESETS,
    Cancelled,
    Request,
    device_choices,
    prepare,
)
from .planes import LayerPlanes, segment_planes
from .segmenters import SEGMENTERS, load_segmenter
from .viewer import add_result_layers_in_steps, apply_refinement, show_probability

__all__ = [
    "ALL_PLANES", "BUILTIN_PLACEHOLDER", "CURRENT_PLANE", "CUSTOM", "DEFAULT_CLASSES",
    "RUN_TOOLTIP", "SegmentationWidget",
]  # fmt: skip

logger = logging.getLogger(__name__)

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
    preview: bool = True  # show the run's preview
    preview_shown: bool = False


class SegmentationWidget(QWidget):
    """Dock widget: image, classes, preset and parameters, model and device, Run/Cancel."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        # Replaced in tests by a function returning a ready (tiny) ITACLIP. With the default,
        # the widget and `segment_layer` share one loaded model (segmenters.SEGMENTERS).
        self.segmenter_factory = load_segmenter
        self._worker = None
        self._layer_steps = LayerSteps()  # putting a result into layers, one step a turn
        self._restoring = False  # True while saved settings are put back (nothing to save)
        self._started = 0.0

        self.input_panel = InputPanel(napari_viewer)
        inputs = self.input_panel.container
        for name in ("image", "planes", "channel_axis", "channels"):
            setattr(self, name, getattr(self.input_panel, name))

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
        self.model_panel = ModelPanel()
        model = self.model_panel.container
        for name in ("model", "pretrained", "weights", "precision"):
            setattr(self, name, getattr(self.model_panel, name))
        self.run_panel = RunPanel()
        run = self.run_panel.container
        for name in ("run_button", "cancel_button", "show_probability", "progress", "stage"):
            setattr(self, name, getattr(self.run_panel, name))
        self.last_run = self.run_panel.last_run
        self._show_progress = self.run_panel.show_progress
        self.refine_panel = RefinePanel(napari_viewer)
        self.refine_button = self.refine_panel.refine_button
        refine = self.refine_panel.container

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
        self.sections["Refine from edits"] = QCollapsible("Refine from edits")
        self.sections["Refine from edits"].addWidget(refine.native)
        layout.addWidget(self.sections["Refine from edits"])
        layout.addStretch()

        self._restore_settings()
        self._connect()
        self._on_image_changed(self.image.value)
        self._show_background_rule()
        self._check_request()

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
        self.refine_button.changed.connect(self.refine)

    def reset_choices(self, *_):
        """Follow the viewer's layers (napari calls this on insert/remove/reorder/rename)."""
        for part in self._containers:
            part.reset_choices()
        self.input_panel.update()
        self.refine_panel.reset_choices()

    def _on_image_changed(self, layer):
        self.input_panel.image_changed()
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
        return self._worker is not None or self._layer_steps.busy

    def _job(self) -> _Job:
        layer = self.image.value
        planes = self.input_panel.layer_planes()
        request = self.request()  # checked here, before any model loads
        model_key = self.model_panel.key(self.device.value)
        preview = self.run_panel.preview.value
        return _Job(layer, planes, request, self.classes.value, model_key, preview=preview)

    def run(self):
        """Start a run in a worker thread and return the worker (None if refused)."""
        return self._start(self._job, self._work, self._on_returned)

    def refine(self):
        """Start a refinement of the chosen labels layer from its edits (and the examples
        layer's strokes) in a worker thread; return the worker (None if refused)."""
        model_key = self.model_panel.key(self.device.value)
        job = partial(self.refine_panel.job, self._refine_request, model_key)
        return self._start(job, self._refine_work, self._on_refined)

    def _refine_request(self, info: dict) -> Request:
        """The parameters shown, with the classes (and background rule) of the result."""
        overrides = {**self.overrides(), "background": info["background"]}
        return prepare(
            info["parameters"]["classes"],
            preset=self.parameter_panel.preset_name,
            aux_text=self.aux_file.value,
            **overrides,
        )

    def _start(self, make_job, work, on_returned):
        if self.running:
            show_warning("ITACLIP: a segmentation is already running; wait for it or press Cancel.")
            return None
        try:
            job = make_job()
        except (ValueError, TypeError) as exc:
            show_error(f"ITACLIP: {exc}")
            return None
        worker = create_worker(work, job, _start_thread=False, _ignore_errors=True)
        job.cancel = lambda: worker.abort_requested
        worker.returned.connect(lambda result: on_returned(job, result))
        worker.errored.connect(lambda exc: self._on_errored(job, exc))
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

    def _segmenter(self, job):
        return SEGMENTERS.get(
            job.model_key,
            self.segmenter_factory,
            loading=lambda: self.run_panel.show_loading(*job.model_key[:2]),
            progress=self.run_panel.show_progress,
        )

    def _work(self, job: _Job):
        """Worker thread: get the model (loaded only if the key changed), then segment."""
        prepare_layer_building()

        return segment_planes(
            self._segmenter(job),
            job.planes,
            job.request,
            progress=self.run_panel.show_progress,
            cancel=job.cancel,
            preview=(lambda result: self._on_preview(job, result)) if job.preview else None,
        )

    def _refine_work(self, job: RefineJob):
        return refine_planes(
            self._segmenter(job),
            job.planes,
            job.request,
            job.examples,
            job.before,
            job.origin,
            every_plane=job.every_plane,
            progress=self.run_panel.show_progress,
            cancel=job.cancel,
        )

    @ensure_main_thread
    def _on_preview(self, job: _Job, result):
        if job.cancel() or self._worker is None:
            return  # cancelled before the preview reached the GUI: nothing is shown
        job.preview_shown = True
        self.run_panel.preview_shown()
        self._show_result(job, result, lambda: None)

    def _on_returned(self, job: _Job, result):
        remember_run_classes(job.layer, job.classes)
        if self.image.value is job.layer:
            self.class_panel.show_for(job.layer)
        planes = result.parameters["n_planes"]
        reused = result.timings.get("encoder") == 0

        def done():
            self.run_panel.ran(time.perf_counter() - self._started, planes, reused)
            self.refine_panel.choose_newest()

        self._show_result(job, result, done)

    def _show_result(self, job: _Job, result, done: Callable[[], None]):
        # One layer per event-loop turn: adding them all at once froze napari for a second.
        steps = add_result_layers_in_steps(
            self.viewer, result, job.layer, show_probability=self.run_panel.shown_probability
        )
        self._layer_steps.start(steps, done)

    def _on_refined(self, job: RefineJob, refinement):
        changed = apply_refinement(self.viewer, job.layer, refinement, job.before)
        reused = refinement.timings.get("encoder") == 0
        self.run_panel.refined(time.perf_counter() - self._started, changed, reused)

    def _on_errored(self, job, exc: Exception):
        if isinstance(exc, Cancelled) and getattr(job, "preview_shown", False):
            show_info("ITACLIP: run cancelled; the result layers keep the preview.")
            self.run_panel.cancelled_after_preview()
            return
        report_failure(exc, lambda: self.sections["Model"].expand(animate=False))

    def _on_finished(self):
        self._worker = None
        self.run_panel.finished()


def _jsonable(value):
    return str(value) if isinstance(value, Path) else value

"""magicgui controls made from the parameter table (`engine.PARAMETERS`), and their values.

The dock widget builds its parameter controls here, so that a parameter added to the table
appears in the widget with its label, range, step and help text. `ParameterPanel` is the
preset combo over them: picking a preset fills every parameter (`background` included: the
class list is numbered as the preset says, as in every face), and editing one makes the
preset "custom".
"""

from __future__ import annotations

from contextlib import contextmanager

from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, LineEdit, SpinBox, TextEdit

from .engine import PARAMETERS, PRESETS, Parameter

CUSTOM = "custom"
DEFAULT_PRESET = "fast"  # one view and a coarse grid: usable on a CPU


def parameter_control(parameter: Parameter):
    """The magicgui control of one run parameter: its label, range and step, help as tooltip.

    An optional number shows None as 0 ("off"); a tuple is a line of comma-separated integers.
    """
    if parameter.kind is bool:
        return CheckBox(text=parameter.label, tooltip=parameter.help)
    if parameter.kind is tuple:
        return LineEdit(label=parameter.label, tooltip=parameter.help)
    bounds = {"min": parameter.minimum, "max": parameter.maximum, "step": parameter.step}
    bounds = {key: value for key, value in bounds.items() if value is not None}
    control = SpinBox if parameter.kind is int else FloatSpinBox
    return control(label=parameter.label, tooltip=parameter.help, **bounds)


def shown_value(parameter: Parameter, value):
    """A parameter's value as its control shows it."""
    if value is None:
        return 0
    return ", ".join(map(str, value)) if parameter.kind is tuple else value


def parameter_value(parameter: Parameter, shown):
    """The parameter's value of what its control shows (the inverse of `shown_value`)."""
    if parameter.optional and not shown:
        return None
    if parameter.kind is tuple:
        return integers(shown, f"{parameter.label} must be integers such as '8, 16'")
    return shown


def integers(text: str, problem: str) -> tuple[int, ...]:
    """The integers of a text separated by commas or spaces; else ValueError(problem)."""
    try:
        return tuple(int(part) for part in text.replace(",", " ").split())
    except ValueError:
        raise ValueError(f"{problem}, got {text!r}") from None


def edits(control):
    """The signal of a control's edits: magicgui's TextEdit never emits `changed` (Qt's
    textChanged carries no value, which magicgui takes for "no value"), so Qt's own."""
    return control.native.textChanged if isinstance(control, TextEdit) else control.changed


class ParameterPanel:
    """The preset combo and one control per parameter (`controls`, by parameter name)."""

    def __init__(self, preset: str = DEFAULT_PRESET):
        self.controls = {name: parameter_control(p) for name, p in PARAMETERS.items()}
        self.preset = ComboBox(label="preset", choices=[*PRESETS, CUSTOM], value=preset)
        self.base_preset = preset  # what "custom" is on top of
        self.filling = False  # True while values are set here, not edited by the user
        self.fill(preset)
        self.preset.changed.connect(self._on_preset)
        for control in self.controls.values():
            control.changed.connect(self._on_edited)

    @contextmanager
    def quiet(self):
        """Set values without "custom" (restoring saved settings)."""
        self.filling = True
        try:
            yield
        finally:
            self.filling = False

    def fill(self, name: str) -> None:
        """Show the preset `name`'s values and make it the base of later edits."""
        self.base_preset = name
        with self.quiet():
            for field, value in preset_values(name).items():
                self.controls[field].value = shown_value(PARAMETERS[field], value)

    def _on_preset(self, name):
        if not self.filling and name != CUSTOM:
            self.fill(name)

    def _on_edited(self, *_):
        if self.filling or self.preset.value == CUSTOM:
            return
        try:
            shown = self.values()
        except ValueError:  # a half-typed list of integers is no preset's
            shown = {}
        if shown != preset_values(self.preset.value):
            with self.quiet():
                self.preset.value = CUSTOM

    def values(self) -> dict:
        """Every parameter's value as shown, as `prepare` overrides (an optional 0 = None)."""
        return {
            name: parameter_value(p, self.controls[name].value) for name, p in PARAMETERS.items()
        }

    @property
    def preset_name(self) -> str:
        """The preset the run starts from (the base of "custom")."""
        return self.base_preset if self.preset.value == CUSTOM else self.preset.value


def preset_values(name: str) -> dict:
    return {field: getattr(PRESETS[name], field) for field in PARAMETERS}

"""magicgui controls made from the parameter table (`engine.PARAMETERS`), and their values.

The dock widget builds its parameter controls here, so that a parameter added to the table
appears in the widget with its label, range, step and help text.
"""

from __future__ import annotations

from magicgui.widgets import CheckBox, FloatSpinBox, LineEdit, SpinBox, TextEdit

from .engine import Parameter


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

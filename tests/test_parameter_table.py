"""The one parameter table (`engine.presets.PARAMETERS`) behind every face.

Each parameter must be a widget control and a command-line option that reach the request, a
saved widget setting and a row of docs/presets.md; a bad class list or aux file must be
refused by every face before any model loads; the defaults the docs state must be the code's.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import napari_itaclip._controls as controls
import napari_itaclip._widget as widget_module
import napari_itaclip.cli as cli
from conftest import build_tiny_clip
from napari_itaclip.engine.presets import PARAMETERS, PRESETS

DOCS = Path(__file__).resolve().parents[1] / "docs"
BASE = "fast"  # the preset every face starts from below
BAD_CLASSES = "background\ncat\nCat"
BAD_CLASSES_MESSAGE = "duplicate class name 'Cat'"
BAD_AUX = "cat >=a small feline\nhorse >=a large animal\n"
BAD_AUX_MESSAGE = "'horse' matches no class name"


def another_value(name: str):
    """A legal value of parameter `name` that differs from the BASE preset's."""
    parameter, value = PARAMETERS[name], getattr(PRESETS[BASE], name)
    if parameter.kind is bool:
        return not value
    if parameter.kind is tuple:
        return tuple(v + 1 for v in value)
    value = value or 0  # an optional parameter that is off
    step = parameter.step
    return value + step if value + step <= parameter.maximum else value - step


def option_argv(name: str, value) -> list[str]:
    option = PARAMETERS[name].option
    if isinstance(value, bool):
        return [option if value else f"--no-{option[2:]}"]
    if isinstance(value, tuple):
        return [option, ",".join(map(str, value))]
    return [option, str(value)]


@pytest.fixture
def model_loads(monkeypatch):
    """Every call that would load CLIP weights, recorded and refused."""
    import napari_itaclip.engine.models as models

    loads = []

    def refuse(*args, **kwargs):
        loads.append(args)
        raise AssertionError("a model was loaded")

    original = models.load_clip
    for module in list(sys.modules.values()):
        if module.__name__.startswith("napari_itaclip") and (
            getattr(module, "load_clip", None) is original
        ):
            monkeypatch.setattr(module, "load_clip", refuse)
    monkeypatch.setattr(cli, "load_segmenter", refuse)
    return loads


def write_bad_aux(tmp_path) -> Path:
    path = tmp_path / "aux.txt"
    path.write_text(BAD_AUX)
    return path


# ------------------------------------------------------------------------- docs/presets.md
def load_table_script():
    spec = importlib.util.spec_from_file_location(
        "make_presets_table", DOCS / "make_presets_table.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_docs_tables_are_generated_from_the_code():
    page = (DOCS / "presets.md").read_text(encoding="utf-8")
    assert load_table_script().with_tables(page) == page, "run python docs/make_presets_table.py"
    for name, parameter in PARAMETERS.items():
        assert f"| `{name}` | `{parameter.option}" in page
        assert f"| `{name}` | " in page.split("### Quality and cost")[1]  # its guidance row


def test_table_script_check_fails_on_an_outdated_page(tmp_path, capsys):
    script = load_table_script()
    page = tmp_path / "presets.md"
    current = (DOCS / "presets.md").read_text(encoding="utf-8")
    page.write_text(
        current.replace("| `short_side` | `--short-side`", "| `short_side` | `--short`")
    )
    assert script.main(["--check"], path=page) == 1
    assert "outdated" in capsys.readouterr().err
    assert script.main([], path=page) == 0
    assert page.read_text(encoding="utf-8") == current
    assert script.main(["--check"], path=page) == 0


# ------------------------------------------------------------------------- docs defaults
def doc_pages() -> dict[str, str]:
    pages = {path.name: path.read_text(encoding="utf-8") for path in DOCS.glob("*.md")}
    pages["README.md"] = (DOCS.parent / "README.md").read_text(encoding="utf-8")
    return pages


def stated(pattern: str) -> list[tuple[str, int]]:
    """(page, number) of every match of `pattern` (one number group) in the docs."""
    return [
        (page, int(number))
        for page, text in doc_pages().items()
        for number in re.findall(pattern, text)
    ]


def test_docs_state_the_codes_defaults(segmenter):
    import torch

    from napari_itaclip.engine.image import PROBABILITY_BUDGET_BYTES
    from napari_itaclip.engine.segmenter import DEFAULT_BAND_MEMORY_MB, ITACLIP

    band = stated(r"band_memory_mb`?\s*(?:=|\()\s*(\d+)")
    assert band and all(number == DEFAULT_BAND_MEMORY_MB for _, number in band), band
    budget = stated(r"(\d+) MiB") + stated(r"probability_budget_mb=None.*None = (\d+)")
    assert budget and all(number * 2**20 == PROBABILITY_BUDGET_BYTES for _, number in budget)
    # "128 on CUDA, 16 elsewhere": the docs, the class docstring and the CLI help agree, and
    # a segmenter built without batch_size gets these numbers.
    pattern = r"(\d+) on CUDA,? (?:else|elsewhere)? ?(\d+)"
    texts = [*doc_pages().values(), ITACLIP.__doc__, segment_help()]
    batch = {pair for text in texts for pair in re.findall(pattern, text)}
    assert len(batch) == 1, batch
    [(cuda, other)] = batch
    assert segmenter.batch_size == int(other)
    if torch.cuda.is_available():
        on_cuda = ITACLIP.from_open_clip(build_tiny_clip(), device="cuda", cache_dir=False)
        assert on_cuda.batch_size == int(cuda)


def segment_help() -> str:
    """`napari-itaclip segment --help`, lines joined."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        assert cli.main(["segment", "--help"]) == cli.EXIT_OK
    return " ".join(output.getvalue().split())


# -------------------------------------------------------------------------------- the CLI
def parse_segment(*options: str):
    argv = ["segment", "image.png", "--classes", "sky; cat", "--preset", BASE, *options]
    return cli.build_parser().parse_args(argv)


@pytest.mark.parametrize("name", PARAMETERS)
def test_every_parameter_is_a_cli_option(name, monkeypatch):
    monkeypatch.setattr(cli, "load_segmenter", lambda args: "segmenter")
    value = another_value(name)
    setup = cli.prepare_segmentation(parse_segment(*option_argv(name, value)))
    assert getattr(setup.request.params, name) == pytest.approx(value)
    assert setup.overrides == {name: pytest.approx(value)}
    assert f"{PARAMETERS[name].option} " in segment_help()


def test_cli_options_left_out_keep_the_presets_values(monkeypatch):
    monkeypatch.setattr(cli, "load_segmenter", lambda args: "segmenter")
    setup = cli.prepare_segmentation(parse_segment())
    assert setup.request.params == PRESETS[BASE]
    assert setup.overrides == {}
    area_off = cli.prepare_segmentation(parse_segment("--preset", "voc21", "--area-thd", "none"))
    assert area_off.request.params.area_thd is None


def test_cli_refuses_bad_classes_and_aux_text_before_loading(tmp_path, model_loads, capsys):
    image = tmp_path / "photo.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    common = ["segment", str(image), "--out", str(tmp_path / "out")]
    assert cli.main([*common, "--classes", BAD_CLASSES.replace("\n", "; ")]) == cli.EXIT_USAGE
    assert BAD_CLASSES_MESSAGE in capsys.readouterr().err
    aux = ["--aux-text", str(write_bad_aux(tmp_path))]
    assert cli.main([*common, "--classes", "background; cat", *aux]) == cli.EXIT_USAGE
    assert BAD_AUX_MESSAGE in capsys.readouterr().err
    assert model_loads == []


# ------------------------------------------------------------------------ segment_layer
def test_segment_layer_refuses_bad_classes_and_aux_text_before_loading(tmp_path, model_loads):
    from napari.layers import Image

    from napari_itaclip import segment_layer

    layer = Image(np.zeros((32, 32, 3), np.uint8), rgb=True)
    with pytest.raises(ValueError, match=BAD_CLASSES_MESSAGE):
        segment_layer(None, layer, BAD_CLASSES, progress=False)
    with pytest.raises(ValueError, match=BAD_AUX_MESSAGE):
        segment_layer(
            None, layer, "background\ncat", aux_text=write_bad_aux(tmp_path), progress=False
        )
    assert model_loads == []


# ----------------------------------------------------------------------------- the widget
@pytest.fixture
def widget(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_ITACLIP_SETTINGS", str(tmp_path / "settings" / "widget.json"))
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="photo")
    widget = widget_module.SegmentationWidget(viewer)
    widget.preset.value = BASE
    widget.background.value = True
    return widget


def shown(control) -> bool:
    """Whether the widget shows `control` (napari test viewers are hidden windows)."""
    return not control.native.isHidden()


@pytest.mark.gui
def test_every_parameter_is_a_widget_control(widget):
    for name, parameter in PARAMETERS.items():
        control = widget.parameter_controls[name]
        assert getattr(widget, name) is control
        assert widget.isAncestorOf(control.native), f"{name} is not in the widget"
        assert control.tooltip == parameter.help
        if parameter.kind is bool:
            assert control.text == parameter.label
        else:
            assert control.label == parameter.label
        if parameter.kind in (int, float):
            assert (control.min, control.max, control.step) == pytest.approx(
                (parameter.minimum, parameter.maximum, parameter.step)
            )
        value = another_value(name)
        control.value = controls.shown_value(parameter, value)
        assert getattr(widget.request().params, name) == pytest.approx(value), name
        if name != "background":
            assert widget.preset.value == widget_module.CUSTOM
        widget.preset.value = BASE
        widget.background.value = True
    assert widget.request().params == replace(PRESETS[BASE], background=True)


@pytest.mark.gui
def test_saved_settings_hold_every_parameter(widget, tmp_path):
    widget.stride.value = 56
    saved = json.loads((tmp_path / "settings" / "widget.json").read_text())
    assert set(PARAMETERS) | {"precision"} <= set(saved)
    assert saved["stride"] == 56


@pytest.mark.gui
def test_widget_refuses_bad_classes_and_aux_text_before_loading(
    widget, tmp_path, monkeypatch, model_loads
):
    errors = []
    monkeypatch.setattr(widget_module, "show_error", errors.append)
    loads = []
    widget.segmenter_factory = lambda *key: loads.append(key)
    assert not shown(widget.request_problem)
    widget.classes.value = BAD_CLASSES
    assert BAD_CLASSES_MESSAGE in widget.request_problem.value  # shown as it is typed
    assert shown(widget.request_problem)
    assert BAD_CLASSES_MESSAGE in widget.run_button.tooltip
    assert widget.run() is None
    widget.classes.value = "background\ncat"
    assert not shown(widget.request_problem)
    assert widget.run_button.tooltip == widget_module.RUN_TOOLTIP
    widget.aux_file.value = write_bad_aux(tmp_path)
    assert BAD_AUX_MESSAGE in widget.request_problem.value
    assert widget.run() is None
    assert len(errors) == 2
    assert BAD_CLASSES_MESSAGE in errors[0] and BAD_AUX_MESSAGE in errors[1]
    assert loads == [] and model_loads == []

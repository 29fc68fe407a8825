"""Write the generated tables of docs/presets.md from `engine.presets` (the one parameter table).

    python docs/make_presets_table.py          # rewrite the tables between their markers
    python docs/make_presets_table.py --check  # exit 1 when docs/presets.md differs from the code

Each table sits between `<!-- begin generated: NAME -->` and `<!-- end generated: NAME -->`;
the text around the markers is the page's own. tests/test_parameter_table.py runs the check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_itaclip.engine.presets import PAPER_SETTINGS, PARAMETERS, PRESETS

PRESETS_PAGE = Path(__file__).with_name("presets.md")


def _number(value) -> str:
    return f"{value:g}"


def preset_value(value) -> str:
    """A preset's value as the table shows it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ", ".join(map(str, value))
    return _number(value)


def value_range(parameter) -> str:
    if parameter.kind is bool:
        return "on / off"
    text = f"{_number(parameter.minimum)} to {_number(parameter.maximum)}"
    if parameter.kind is tuple:
        text = f"integers, each {text}"
    if parameter.step is not None:
        text += f", step {_number(parameter.step)}"
    return text + (", or none" if parameter.optional else "")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join(
        "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |" for cells in lines
    )


def parameters_table() -> str:
    """One row per parameter: option, widget label, range, help and every preset's value."""
    header = ["name", "command line", "widget", "range", "what it does", *PRESETS]
    rows = []
    for name, parameter in PARAMETERS.items():
        option = parameter.option
        if parameter.kind is bool:
            option = f"{option} / --no-{option[2:]}"
        values = [preset_value(getattr(preset, name)) for preset in PRESETS.values()]
        rows.append(
            [f"`{name}`", f"`{option}`", parameter.label, value_range(parameter), parameter.help]
            + values
        )
    return _table(header, rows)


def presets_table() -> str:
    """What the paper ran each preset with: its dataset's class set, aux text and mIoU."""
    header = ["preset", "built-in class set", "aux text in the paper", "paper mIoU"]
    rows = []
    for name in PRESETS:
        setting = PAPER_SETTINGS.get(name)
        if setting is None:
            rows.append([f"`{name}`", "-", "-", "-"])
        else:
            rows.append(
                [f"`{name}`", f"`{setting.class_set}`", setting.aux_kind, f"{setting.miou:.1f}"]
            )
    return _table(header, rows)


TABLES = {"presets": presets_table, "parameters": parameters_table}


def with_tables(page: str) -> str:
    """`page` with the text between each pair of markers replaced by its generated table."""
    for name, make in TABLES.items():
        begin, end = f"<!-- begin generated: {name} -->", f"<!-- end generated: {name} -->"
        if page.count(begin) != 1 or page.count(end) != 1:
            raise ValueError(f"the page needs exactly one {begin} ... {end} pair")
        before, rest = page.split(begin)
        after = rest.split(end)[1]
        page = f"{before}{begin}\n{make()}\n{end}{after}"
    return page


def main(argv: list[str] | None = None, path: Path = PRESETS_PAGE) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is outdated")
    args = parser.parse_args(argv)
    page = path.read_text(encoding="utf-8")
    generated = with_tables(page)
    if args.check:
        if generated != page:
            print(f"{path} is outdated: run python docs/make_presets_table.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(generated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

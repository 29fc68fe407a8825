"""Class lists and auxiliary texts (docs/method.md §3.1, §3.4): parsing and validation.

A class list has one class per line; a line may hold several names ("variants") separated by
", " (comma and space). Every name becomes a text query; the queries of one line belong to one
class. When `background` is true, line 0 holds the background words.

An auxiliary text has one `name >=text` line per non-background class (definitions or
synonyms, e.g. written by an LLM).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

VARIANT_SEPARATOR = ", "
AUX_SEPARATOR = ">="
# Labels are stored as uint16 at most.
MAX_CLASSES = 65535
BUILTIN_CLASS_SETS = ("voc21", "context60", "coco_object", "coco_stuff", "cityscapes")


@dataclass(frozen=True)
class ClassList:
    """Parsed classes: `variants[i]` holds the names (queries) of class i."""

    variants: tuple[tuple[str, ...], ...]
    background: bool

    @property
    def class_names(self) -> list[str]:
        return [names[0] for names in self.variants]

    @property
    def queries(self) -> list[str]:
        return [name for names in self.variants for name in names]

    @property
    def query_class(self) -> list[int]:
        return [i for i, names in enumerate(self.variants) for _ in names]

    def __len__(self) -> int:
        return len(self.variants)

    def to_text(self) -> str:
        return "\n".join(VARIANT_SEPARATOR.join(names) for names in self.variants)


def builtin_class_set(name: str) -> str:
    """The text of a built-in class list (the paper datasets' class names)."""
    if name not in BUILTIN_CLASS_SETS:
        raise ValueError(
            f"unknown built-in class set {name!r}; choose one of {', '.join(BUILTIN_CLASS_SETS)}"
        )
    return resources.files(__package__).joinpath("class_sets", f"{name}.txt").read_text("utf-8")


def _normalised(name: str) -> str:
    # The CLIP tokenizer lowercases and collapses whitespace: names equal after this are the same
    # query.
    return " ".join(name.lower().split())


def _is_existing_file(value) -> bool:
    if isinstance(value, os.PathLike):
        return True
    return "\n" not in value and len(value) < 4096 and os.path.isfile(value)


def _read_text_file(path, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{what} file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {what} file {path}: {exc}") from None


def class_lines(classes) -> list[str]:
    """The raw class lines of any accepted form of `classes` (see `parse_class_list`)."""
    if isinstance(classes, os.PathLike) or (
        isinstance(classes, str) and _is_existing_file(classes)
    ):
        return _read_text_file(classes, "class list").splitlines()
    if isinstance(classes, str):
        if classes.strip() in BUILTIN_CLASS_SETS:
            return builtin_class_set(classes.strip()).splitlines()
        if "\n" in classes:
            return classes.splitlines()
        # One line typed inline (CLI, notebook): ";" separates classes.
        return classes.split(";")
    if isinstance(classes, Sequence) and not isinstance(classes, bytes):
        lines = list(classes)
        for i, line in enumerate(lines):
            if not isinstance(line, str):
                raise TypeError(f"class {i} must be a string, got {type(line).__name__}")
        return lines
    raise TypeError(
        "classes must be a list of strings, a text block, a built-in class set name or a path to "
        f"a class-list file; got {type(classes).__name__}"
    )


def parse_class_list(classes, background: bool) -> ClassList:
    """Parse and validate a class list.

    `classes` is a list of strings (one class each, ", " separates variants), a text block (one
    class per line), a path to such a file, a built-in set name (`BUILTIN_CLASS_SETS`), or a
    single line where ";" separates classes. Blank lines are ignored.
    """
    variants = []
    seen: dict[str, tuple[int, int]] = {}  # normalised name -> (line number, class index)
    for line_no, line in enumerate(class_lines(classes), start=1):
        if not line.strip():
            continue
        names = tuple(name.strip() for name in line.strip().split(VARIANT_SEPARATOR))
        for name in names:
            if not name:
                raise ValueError(f"class line {line_no} ({line.strip()!r}) has an empty name")
            key = _normalised(name)
            # A word may be both a background word and a class (the authors' COCO-Object list
            # has "bed" twice): the two identical queries then share their probability.
            background_clash = background and key in seen and (seen[key][1] == 0) != (not variants)
            if key in seen and not background_clash:
                raise ValueError(
                    f"duplicate class name {name!r} on line {line_no} (already on line "
                    f"{seen[key][0]}); names must be unique (case-insensitive)"
                )
            seen.setdefault(key, (line_no, len(variants)))
        variants.append(names)
    if not variants:
        raise ValueError("the class list is empty: give at least one class name")
    if len(variants) > MAX_CLASSES:
        raise ValueError(f"too many classes: {len(variants)} (at most {MAX_CLASSES})")
    if len(variants) < 2 and len(variants[0]) > 1:
        # "cell, nucleus, background" typed on one line: the names of ONE class.
        raise ValueError(
            f"only one class, named {', '.join(map(repr, variants[0]))}: ', ' separates the "
            "names of one class; separate classes with '; ' or put one class per line"
        )
    if background and len(variants) < 2:
        raise ValueError(
            "with background=True the first line is the background, so at least one more class "
            "is needed"
        )
    if len(variants) < 2:
        # One class without a background labels every pixel with it; most often it is a
        # class-list file name typed without its folder or suffix.
        hint = (
            f" (if {variants[0][0]!r} is meant to be a class-list file, give its path)"
            if isinstance(classes, str)
            else ""
        )
        raise ValueError(
            f"only one class, {variants[0][0]!r}, and no background: every pixel would get it; "
            f"give at least two classes, or a background line first with background=True{hint}"
        )
    return ClassList(tuple(variants), bool(background))


def aux_lines(aux_text) -> list[tuple[int, str, str]]:
    """(line number, name, text) of every `name >=text` line of an auxiliary text."""
    if isinstance(aux_text, Mapping):
        entries = []
        for i, (name, text) in enumerate(aux_text.items(), start=1):
            if not isinstance(name, str) or not isinstance(text, str):
                raise TypeError("aux_text mapping must map class names (str) to texts (str)")
            entries.append((i, name.strip(), text.strip()))
        return entries
    if isinstance(aux_text, os.PathLike) or (
        isinstance(aux_text, str) and AUX_SEPARATOR not in aux_text and _is_existing_file(aux_text)
    ):
        aux_text = _read_text_file(aux_text, "auxiliary text")
    elif not isinstance(aux_text, str):
        raise TypeError(
            "aux_text must be a path, a text of `name >=text` lines or a mapping; got "
            f"{type(aux_text).__name__}"
        )
    entries = []
    for line_no, line in enumerate(aux_text.splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, text = line.partition(AUX_SEPARATOR)
        if not sep:
            raise ValueError(
                f"auxiliary text line {line_no} ({line.strip()[:60]!r}) is not of the form "
                f"'name {AUX_SEPARATOR}text'"
            )
        entries.append((line_no, name.strip(), text.strip()))
    return entries


def parse_aux_text(aux_text, class_list: ClassList) -> list[str]:
    """One auxiliary text per non-background class, in class order.

    Each line's name must be one of the names (any variant) of a non-background class; every
    such class needs exactly one line.
    """
    first = 1 if class_list.background else 0
    # Later classes win, so a word that is both a background word and a class names the class.
    owner = {
        _normalised(name): cls for cls, names in enumerate(class_list.variants) for name in names
    }
    texts: dict[int, str] = {}
    for line_no, name, text in aux_lines(aux_text):
        cls = owner.get(_normalised(name))
        if cls is None:
            raise ValueError(
                f"auxiliary text line {line_no}: {name!r} matches no class name "
                f"(classes: {', '.join(class_list.class_names[first:][:20])}"
                f"{', ...' if len(class_list) - first > 20 else ''})"
            )
        if cls < first:
            raise ValueError(
                f"auxiliary text line {line_no}: {name!r} is a background word; background "
                "queries are never fused, so the file must not have a line for them"
            )
        if cls in texts:
            raise ValueError(
                f"auxiliary text line {line_no}: a second line for class "
                f"{class_list.class_names[cls]!r}"
            )
        if not text:
            raise ValueError(f"auxiliary text line {line_no}: the text after '>=' is empty")
        texts[cls] = text
    missing = [class_list.class_names[c] for c in range(first, len(class_list)) if c not in texts]
    if missing:
        raise ValueError(
            f"auxiliary text has no line for {len(missing)} class(es): "
            f"{', '.join(missing[:10])}{', ...' if len(missing) > 10 else ''}"
        )
    return [texts[c] for c in range(first, len(class_list))]

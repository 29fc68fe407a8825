"""The dock widget's class box, and the rule that decides which class list it shows.

The class box follows the selected image (`classes_for`): that image's last run's classes if
it was segmented in this session, else its own suggestion (`metadata["itaclip_classes"]`, as
the samples carry), else what the user typed last. A line under the box says which, and
whether line 0 is background (a parameter: it follows the preset, as in every face).
"""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import ComboBox, Container, Label, PushButton, TextEdit
from napari.utils.notifications import show_error
from qtpy.QtWidgets import QFileDialog

from ._controls import edits
from .engine import BUILTIN_CLASS_SETS, PRESETS, builtin_class_set

SUGGESTION_KEY = "itaclip_classes"  # set by whoever made the image (the samples)
LAST_RUN_KEY = "itaclip_last_run_classes"  # set by the widget after a run on the image
LAST_RUN, SUGGESTED, TYPED = "from this image's last run", "suggested for this image", "typed"
BUILTIN_PLACEHOLDER = "insert a built-in class set..."


def classes_for(layer, typed: str) -> tuple[str, str]:
    """The class list the box shows for `layer` (or None), and where it comes from."""
    metadata = {} if layer is None else layer.metadata
    if metadata.get(LAST_RUN_KEY):
        return metadata[LAST_RUN_KEY], LAST_RUN
    if metadata.get(SUGGESTION_KEY):
        return metadata[SUGGESTION_KEY], SUGGESTED
    return typed, TYPED


def remember_run_classes(layer, classes: str) -> None:
    """Record on the image layer the classes it was just segmented with (this session only)."""
    layer.metadata[LAST_RUN_KEY] = classes


class ClassPanel:
    """The class box, where its list came from, the problem line, built-in sets and files.

    background: the "first line is background" control (a parameter: it follows the preset,
    and a built-in class set sets it as its dataset needs).
    """

    def __init__(self, background, typed: str):
        self.background = background
        self.typed = typed  # what the user typed (or loaded, or inserted) last
        self._showing = False  # True while the box shows a list the user did not type
        self._source, self._background = TYPED, ""
        self.classes = TextEdit(
            label="classes", value=typed,
            tooltip="One class per line; ', ' separates variants (synonyms) of one class",
        )  # fmt: skip
        self.source = Label(value=f"classes: {TYPED}")
        self.source.native.setWordWrap(True)
        self.source.native.setStyleSheet("color: gray")
        # What is wrong with the classes, aux text or parameters, checked as they change.
        self.problem = Label(value="", visible=False)
        self.problem.native.setWordWrap(True)
        self.problem.native.setStyleSheet("color: #e0524c")
        self.builtin = ComboBox(
            label="built-in", choices=[BUILTIN_PLACEHOLDER, *BUILTIN_CLASS_SETS]
        )
        self.load_classes = PushButton(text="Load list...")
        self.save_classes = PushButton(text="Save list...")
        files = Container(
            widgets=[self.load_classes, self.save_classes], layout="horizontal", labels=False
        )
        self.container = Container(
            widgets=[self.classes, self.source, self.problem, background, self.builtin, files]
        )
        edits(self.classes).connect(self._on_typed)
        self.builtin.changed.connect(self._on_builtin)
        self.load_classes.changed.connect(self._ask_load)
        self.save_classes.changed.connect(self._ask_save)

    def show_for(self, layer) -> None:
        """Show the class list the rule gives for `layer` (see the module doc)."""
        text, source = classes_for(layer, self.typed)
        self._showing = True
        try:
            self.classes.value = text
        finally:
            self._showing = False
        self._show_source(source)

    def show_background(self, background: bool, origin: str) -> None:
        """Add to the source line whether line 0 is background and what said so."""
        self._background = f"line 0 {'is' if background else 'is not'} background ({origin})"
        self._show_source(self._source)

    def _show_source(self, source: str) -> None:
        self._source = source
        self.source.value = "; ".join(filter(None, (f"classes: {source}", self._background)))

    def show_problem(self, problem: str) -> None:
        self.problem.value = problem
        self.problem.visible = bool(problem)

    def _on_typed(self, *_):
        if not self._showing:
            self.typed = self.classes.value
            self._show_source(TYPED)

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

    def _ask_load(self):
        path, _ = QFileDialog.getOpenFileName(
            self.container.native, "Load class list", "", "Text (*.txt);;All (*)"
        )
        if path:
            try:
                self.load_class_file(path)
            except (OSError, UnicodeDecodeError) as exc:
                show_error(f"ITACLIP: cannot read {path}: {exc}")

    def _ask_save(self):
        path, _ = QFileDialog.getSaveFileName(
            self.container.native, "Save class list", "", "Text (*.txt)"
        )
        if path:
            try:
                self.save_class_file(path)
            except OSError as exc:
                show_error(f"ITACLIP: cannot write {path}: {exc}")

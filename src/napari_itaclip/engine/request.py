"""One validated segmentation request: classes, auxiliary text, preset and overrides.

Every face (widget, notebook, command line, cluster) calls `prepare` once, before any model
loads, so that a bad class list, auxiliary-text file or parameter is reported at once; the
engine's per-image call (`ITACLIP.segment(image, request)`) then only reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .classes import ClassList, parse_aux_text, parse_class_list
from .image import PROBABILITY_BUDGET_BYTES, probability_downsample_for_budget
from .presets import Preset, resolve_preset

PROBABILITY_BUDGET_MB = PROBABILITY_BUDGET_BYTES / 2**20


@dataclass(frozen=True)
class Request:
    """What to segment into and how; built by `prepare`, never changed afterwards."""

    class_list: ClassList
    params: Preset
    preset: str  # the preset the parameters started from ("custom" for a Preset object)
    aux_texts: tuple[str, ...] | None = None  # one text per non-background class
    probability_downsample: int | str = "auto"  # a factor, or "auto" from the budget
    probability_budget_mb: float = PROBABILITY_BUDGET_MB
    # an engine.examples.ExamplesBank applied to every image (docs/method.md §10.3)
    examples: object | None = None

    @property
    def n_classes(self) -> int:
        return len(self.class_list)

    @property
    def class_names(self) -> list[str]:
        return self.class_list.class_names

    def with_overrides(self, **overrides) -> Request:
        """The same request with some parameters changed (checked again)."""
        return replace(self, params=resolve_preset(self.params, overrides))

    def probability_factor(self, height: int, width: int, n_planes: int = 1) -> int:
        """The probability downsample factor for images of this size.

        An explicit factor is used as is; "auto" is the smallest f such that the float32
        maps of every class and plane, ceil(H/f) x ceil(W/f) each, fit the budget.
        """
        if self.probability_downsample != "auto":
            return self.probability_downsample
        budget = self.probability_budget_mb * 2**20
        return probability_downsample_for_budget(self.n_classes, height, width, budget, n_planes)

    def record_budget(self) -> float | None:
        """The budget, when it chose the factor ("auto"); None for an explicit factor."""
        return self.probability_budget_mb if self.probability_downsample == "auto" else None

    def record(self) -> dict:
        """The request's part of a result's `parameters` (JSON-ready)."""
        background = int(self.class_list.background)
        aux = None
        if self.aux_texts is not None:
            names = self.class_list.class_names[background:]
            aux = "\n".join(
                f"{name} >={text}" for name, text in zip(names, self.aux_texts, strict=True)
            )
        record = {
            **self.params.to_dict(),
            "preset": self.preset,
            "classes": self.class_list.to_text(),
            "aux_text": aux,
        }
        if self.examples is not None:
            record["examples_bank"] = self.examples.describe()
        return record


def prepare(
    classes,
    *,
    preset: str | Preset = "voc21",
    aux_text=None,
    probability_downsample: int | str = "auto",
    probability_budget_mb: float | None = None,
    examples=None,
    **overrides,
) -> Request:
    """Check everything about a run that does not need the image or the model.

    classes: a list of class strings (", " separates names of one class), a text block, a
        file path or a built-in set name ("voc21", ...).
    preset: a name in `PRESETS` or a `Preset`. overrides: any `PARAMETERS` name.
    aux_text: `name >=text` lines (a path, a text or a mapping), one per non-background class.
    probability_downsample: keep probabilities at 1/f of the size, or "auto" (the smallest
        factor whose maps fit `probability_budget_mb`, default PROBABILITY_BUDGET_MB).
    examples: an `ExamplesBank` (or its .npz path) to apply to every image; its classes must
        all be in the class list (the model is checked when a segmenter uses it).
    Raises ValueError or TypeError naming the problem.
    """
    if isinstance(preset, Request):
        raise TypeError("prepare() takes classes and parameters; this is already a Request")
    params = resolve_preset(preset, overrides)
    class_list = parse_class_list(classes, params.background)
    aux_texts = None if aux_text is None else tuple(parse_aux_text(aux_text, class_list))
    if probability_downsample != "auto" and (
        isinstance(probability_downsample, bool)
        or not isinstance(probability_downsample, int)
        or probability_downsample < 1
    ):
        raise ValueError(
            "probability_downsample must be 'auto' or a positive integer, got "
            f"{probability_downsample!r}"
        )
    if probability_budget_mb is None:
        probability_budget_mb = PROBABILITY_BUDGET_MB
    elif probability_downsample != "auto":
        raise ValueError("probability_budget_mb only applies to probability_downsample='auto'")
    elif isinstance(probability_budget_mb, bool) or not (
        isinstance(probability_budget_mb, int | float) and probability_budget_mb > 0
    ):
        raise ValueError(
            f"probability_budget_mb must be a positive number, got {probability_budget_mb!r}"
        )
    if examples is not None:
        from .examples import ExamplesBank

        bank = examples if isinstance(examples, ExamplesBank) else ExamplesBank.load(examples)
        bank.class_ids_for(class_list.class_names)  # its classes must be the request's
        examples = bank
    name = preset if isinstance(preset, str) else "custom"
    return Request(
        class_list,
        params,
        name,
        aux_texts,
        probability_downsample,
        probability_budget_mb,
        examples,
    )

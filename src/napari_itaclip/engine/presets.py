"""Every run parameter, declared once, and the presets as plain data (docs/method.md §8).

Each `Preset` field carries its label, range, step and help text as field metadata;
`PARAMETERS` lists them. The widget's controls, the command-line options, the saved widget
settings, the table in docs/presets.md and the validation below are all derived from it.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace


@dataclass(frozen=True)
class Parameter:
    """How one run parameter is shown, bounded and explained."""

    name: str
    kind: type  # int, float, bool or tuple (a tuple of positive ints)
    label: str
    help: str
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    optional: bool = False  # None is allowed and means "off"; faces show it as 0

    @property
    def option(self) -> str:
        """The command-line option: `--short-side`."""
        return "--" + self.name.replace("_", "-")

    def check(self, value) -> None:
        """Raise ValueError naming this parameter when `value` has the wrong type or range."""
        if value is None and self.optional:
            return
        if self.kind is bool:
            ok, expected = isinstance(value, bool), "true or false"
        elif self.kind is int:
            ok, expected = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif self.kind is float:
            ok = (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
            )
            expected = "a number"
        else:  # a tuple of integers
            ok = isinstance(value, tuple) and len(value) > 0
            ok = ok and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            expected = "a non-empty list of integers"
        if not ok:
            raise ValueError(f"{self.name} must be {expected}, got {value!r}")
        values = value if self.kind is tuple else (value,)
        low = -math.inf if self.minimum is None else self.minimum
        high = math.inf if self.maximum is None else self.maximum
        if self.kind is not bool and not all(low <= v <= high for v in values):
            raise ValueError(f"{self.name} must be in [{low:g}, {high:g}], got {value!r}")


def _declare(label, help, minimum=None, maximum=None, step=None):
    return {"label": label, "help": help, "minimum": minimum, "maximum": maximum, "step": step}


@dataclass(frozen=True)
class Preset:
    """Every parameter of one run. Field names are the `**overrides` of `ITACLIP.segment`."""

    short_side: int = field(
        metadata=_declare(
            "short side",
            "The image is resized so that its short side has this many pixels.",
            16, 4096, 16,
        )
    )  # fmt: skip
    logit_scale: float = field(
        metadata=_declare(
            "logit scale",
            "Multiplies the cosine similarities before the softmax over classes; higher is "
            "sharper.",
            0.1, 1000, 5,
        )
    )  # fmt: skip
    c_img: float = field(
        metadata=_declare(
            "views weight",
            "Weight of the original, grey and blurred views against the two flipped views.",
            0, 1, 0.05,
        )
    )  # fmt: skip
    c_def: float = field(
        metadata=_declare(
            "aux weight",
            "Weight of the auxiliary text (definitions or synonyms) in each class's text "
            "feature.",
            0, 1, 0.05,
        )
    )  # fmt: skip
    prob_thd: float = field(
        metadata=_declare(
            "probability thr.",
            "Pixels whose best class probability is below this get the first class.",
            0, 1, 0.05,
        )
    )  # fmt: skip
    area_thd: float | None = field(
        metadata=_declare(
            "area thr.",
            "A class must cover more than this share of the non-background pixels, else it "
            "is removed (0 or none: off).",
            0, 0.99, 0.05,
        )
    )  # fmt: skip
    background: bool = field(
        metadata=_declare("first line is background", "Whether the first class is background.")
    )
    max_long_side: int = field(
        default=2048,
        metadata=_declare(
            "max long side",
            "The resized image's long side never exceeds this many pixels.",
            16, 8192, 16,
        ),
    )  # fmt: skip
    crop: int = field(
        default=224,
        metadata=_declare(
            "crop", "Sliding-window size, in pixels of the resized image.", 16, 1024, 16
        ),
    )
    stride: int = field(
        default=28,
        metadata=_declare("stride", "Sliding-window step, in pixels of the resized image.", 1, 1024, 4),
    )  # fmt: skip
    image_engineering: bool = field(
        default=True,
        metadata=_declare(
            "image engineering (5 views)",
            "Five views per window (original, grey, blurred, two flips) instead of one.",
        ),
    )
    pamr_steps: int = field(
        default=10,
        metadata=_declare("PAMR steps", "PAMR refinement iterations (0: off).", 0, 50, 1),
    )
    pamr_dilations: tuple[int, ...] = field(
        default=(8, 16),
        metadata=_declare("PAMR dilations", "Dilations of PAMR's 3x3 neighbourhoods.", 1, 64),
    )
    closing: bool = field(
        default=True,
        metadata=_declare("closing (3x3)", "A 3x3 grey-level closing of the label image."),
    )
    examples_weight: float = field(
        default=20.0,
        metadata=_declare(
            "examples weight",
            "Weight a of the examples (painted pixels or a bank) against the text: a / logit "
            "scale times the examples' similarity is added to each class's logits.",
            0, 100, 0.5,
        ),
    )  # fmt: skip
    examples_sharpness: float = field(
        default=5.0,
        metadata=_declare(
            "examples sharpness",
            "Sharpness b of the examples' similarity exp(-b (1 - cosine)); higher favours "
            "the closest examples.",
            0, 100, 0.5,
        ),
    )  # fmt: skip
    examples_prototypes: bool = field(
        default=True,
        metadata=_declare(
            "examples as prototypes",
            "Compare pixels with a few k-means prototypes per class (on) or with every "
            "example feature (off: the Tip-Adapter cache).",
        ),
    )

    def to_dict(self) -> dict:
        values = asdict(self)
        values["pamr_dilations"] = list(self.pamr_dilations)
        return values


def _parameter(declared) -> Parameter:
    hint = typing.get_type_hints(Preset)[declared.name]
    args = typing.get_args(hint)
    optional = type(None) in args
    if isinstance(hint, types.UnionType):
        hint = next(a for a in args if a is not type(None))
    kind = tuple if typing.get_origin(hint) is tuple else hint
    return Parameter(declared.name, kind, optional=optional, **declared.metadata)


PARAMETERS: dict[str, Parameter] = {f.name: _parameter(f) for f in fields(Preset)}
PARAMETER_NAMES = tuple(PARAMETERS)


PRESETS: dict[str, Preset] = {
    "voc21": Preset(
        short_side=336, logit_scale=60, c_img=0.7, c_def=0.05, prob_thd=0.1, area_thd=0.1,
        background=True,
    ),
    "context60": Preset(
        short_side=336, logit_scale=55, c_img=0.75, c_def=0.15, prob_thd=0.1, area_thd=None,
        background=True,
    ),
    "coco_object": Preset(
        short_side=336, logit_scale=50, c_img=0.75, c_def=0.1, prob_thd=0.1, area_thd=None,
        background=True,
    ),
    "coco_stuff": Preset(
        short_side=448, logit_scale=40, c_img=0.75, c_def=0.2, prob_thd=0.0, area_thd=None,
        background=False,
    ),
    "cityscapes": Preset(
        short_side=560, logit_scale=40, c_img=0.7, c_def=0.05, prob_thd=0.0, area_thd=None,
        background=False,
    ),
    # Interactive/CPU use: 1 view instead of 5 and a 4x coarser window grid (6 encoder passes
    # instead of 225 on a 500x375 image, about 1/37), and half the PAMR steps.
    "fast": Preset(
        short_side=336, logit_scale=50, c_img=0.75, c_def=0.1, prob_thd=0.0, area_thd=None,
        background=False, stride=112, image_engineering=False, pamr_steps=5,
    ),
}  # fmt: skip


@dataclass(frozen=True)
class PaperSetting:
    """What the paper used a preset with: its dataset's class list and auxiliary text kind."""

    class_set: str
    aux_kind: str
    miou: float  # the mIoU the paper reports with ViT-B/16 OpenAI weights


PAPER_SETTINGS: dict[str, PaperSetting] = {
    "voc21": PaperSetting("voc21", "definitions", 67.9),
    "context60": PaperSetting("context60", "definitions", 37.5),
    "coco_object": PaperSetting("coco_object", "synonyms", 37.7),
    "coco_stuff": PaperSetting("coco_stuff", "definitions", 27.0),
    "cityscapes": PaperSetting("cityscapes", "synonyms", 40.2),
}


def resolve_preset(preset: str | Preset, overrides: dict) -> Preset:
    """The preset's values with `overrides` applied and checked."""
    if isinstance(preset, Preset):
        base = preset
    elif isinstance(preset, str) and preset in PRESETS:
        base = PRESETS[preset]
    else:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    unknown = sorted(set(overrides) - set(PARAMETER_NAMES))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(PARAMETER_NAMES)}"
        )
    values = dict(overrides)
    if values.get("pamr_dilations") is not None and not isinstance(values["pamr_dilations"], str):
        values["pamr_dilations"] = tuple(values["pamr_dilations"])
    resolved = replace(base, **values)
    validate(resolved)
    return resolved


def validate(preset: Preset) -> None:
    """Types and ranges from `PARAMETERS`, then the rules that tie parameters together."""
    for p in PARAMETERS.values():
        p.check(getattr(preset, p.name))
    if preset.stride > preset.crop:
        raise ValueError(f"stride ({preset.stride}) must not be larger than crop ({preset.crop})")
    if preset.max_long_side < preset.short_side:
        raise ValueError("max_long_side must be at least short_side")

"""Presets as plain data (METHOD.md section 8) and the names of every tunable parameter."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class Preset:
    """Every parameter of one run. Field names are the `**overrides` of `ITACLIP.segment`."""

    short_side: int  # the resized image's short side S (pixels)
    logit_scale: float  # multiplies the cosine logits before the softmax over queries
    c_img: float  # weight of the original/grey/blur views against the flipped views
    c_def: float  # weight of the auxiliary-text feature in a fused query feature
    prob_thd: float  # pixels whose best class probability is below this get label 0
    area_thd: float | None  # a class must cover more than this share of non-background pixels
    background: bool  # whether line 0 of the class list is background
    class_set: str | None = None  # the built-in class list this preset was made for
    aux_kind: str | None = None  # the kind of auxiliary text the paper used ("definitions"...)
    max_long_side: int = 2048  # the resized long side never exceeds this
    crop: int = 224  # sliding-window size (pixels of the resized image)
    stride: int = 28  # sliding-window step
    image_engineering: bool = True  # five views per window (original, grey, blur, 2 flips)
    pamr_steps: int = 10  # PAMR iterations (0 disables PAMR)
    pamr_dilations: tuple[int, ...] = (8, 16)
    closing: bool = True  # 3x3 grey-level closing of the label image

    def to_dict(self) -> dict:
        values = asdict(self)
        values["pamr_dilations"] = list(self.pamr_dilations)
        return values


PRESETS: dict[str, Preset] = {
    "voc21": Preset(336, 60, 0.7, 0.05, 0.1, 0.1, True, "voc21", "definitions"),
    "context60": Preset(336, 55, 0.75, 0.15, 0.1, None, True, "context60", "definitions"),
    "coco_object": Preset(336, 50, 0.75, 0.1, 0.1, None, True, "coco_object", "synonyms"),
    "coco_stuff": Preset(448, 40, 0.75, 0.2, 0.0, None, False, "coco_stuff", "definitions"),
    "cityscapes": Preset(560, 40, 0.7, 0.05, 0.0, None, False, "cityscapes", "synonyms"),
    # Interactive/CPU use: 1 view instead of 5 and a 4x coarser window grid (6 encoder passes
    # instead of 225 on a 500x375 image, about 1/37), and half the PAMR steps.
    "fast": Preset(
        336, 50, 0.75, 0.1, 0.0, None, False, stride=112, image_engineering=False, pamr_steps=5
    ),
}

PARAMETER_NAMES = tuple(f.name for f in fields(Preset))


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
    if "pamr_dilations" in values:
        values["pamr_dilations"] = tuple(int(d) for d in values["pamr_dilations"])
    resolved = replace(base, **values)
    validate(resolved)
    return resolved


def validate(p: Preset) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ValueError(message)

    for name in ("short_side", "max_long_side", "crop", "stride"):
        value = getattr(p, name)
        need(
            isinstance(value, int) and value > 0,
            f"{name} must be a positive integer, got {value!r}",
        )
    need(p.crop >= 16, f"crop must be at least one 16-pixel patch, got {p.crop}")
    need(p.stride <= p.crop, f"stride ({p.stride}) must not be larger than crop ({p.crop})")
    need(p.max_long_side >= p.short_side, "max_long_side must be at least short_side")
    need(p.logit_scale > 0, f"logit_scale must be positive, got {p.logit_scale}")
    need(0 <= p.c_img <= 1, f"c_img must be in [0, 1], got {p.c_img}")
    need(0 <= p.c_def <= 1, f"c_def must be in [0, 1], got {p.c_def}")
    need(0 <= p.prob_thd <= 1, f"prob_thd must be in [0, 1], got {p.prob_thd}")
    need(
        p.area_thd is None or 0 <= p.area_thd < 1,
        f"area_thd must be None or in [0, 1), got {p.area_thd}",
    )
    need(
        isinstance(p.pamr_steps, int) and p.pamr_steps >= 0,
        f"pamr_steps must be a non-negative integer, got {p.pamr_steps!r}",
    )
    need(
        len(p.pamr_dilations) > 0 and all(d > 0 for d in p.pamr_dilations),
        f"pamr_dilations must be positive integers, got {p.pamr_dilations}",
    )

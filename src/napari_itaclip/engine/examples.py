"""Examples (docs/method.md §10.3): the user's pixels as visual keys, training-free.

The kept token features under example pixels become keys; every token of every window is
compared with them and the result is added to its text logits before stitching:

    logits_q += (examples_weight / logit_scale) * E_class(q)
    cache (Tip-Adapter):  E_c = mean over keys k of class c of exp(-b (1 - f . k))
    prototypes:           E_c = max over prototypes p of class c of exp(-b (1 - f . p))

with f and k L2-normalised, b = examples_sharpness, and the prototypes the spherical k-means
centres of each class's keys (one per KEYS_PER_PROTOTYPE keys, at most MAX_PROTOTYPES).
An `ExamplesBank` holds keys from annotated images for use on other images.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .features import ImageFeatures
from .presets import Preset

MAX_PROTOTYPES = 8
KEYS_PER_PROTOTYPE = 64
KMEANS_STEPS = 10
BANK_FORMAT = 1
# The encoder settings a bank records (its keys were made with them).
BANK_SETTINGS = ("short_side", "max_long_side", "crop", "stride", "image_engineering", "c_img")


def check_examples(examples, shape: tuple[int, int], n_classes: int) -> np.ndarray | None:
    """The (H, W) examples as an int64 array, or None when no pixel holds a class.

    examples: integers, a class id where the user vouches for that class, -1 elsewhere.
    Raises ValueError naming the problem (dtype, shape, an id out of range).
    """
    array = np.asarray(examples)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"examples must be an integer array of class ids (-1 where there is no example), "
            f"got dtype {array.dtype}"
        )
    if array.shape != tuple(shape):
        raise ValueError(f"examples must have the image's shape {tuple(shape)}, got {array.shape}")
    outside = (array < -1) | (array >= n_classes)
    if outside.any():
        wrong = np.unique(array[outside])[:5].tolist()
        raise ValueError(
            f"examples hold ids outside -1..{n_classes - 1} (-1: no example; {n_classes} "
            f"classes): {wrong}"
        )
    return array.astype(np.int64) if (array >= 0).any() else None


def resize_nearest(examples: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The examples at the resized image's size: each resized pixel takes the example of the
    original pixel under its centre."""
    rows = [np.minimum(((np.arange(n) + 0.5) * m / n).astype(np.int64), m - 1)
            for n, m in zip(size, examples.shape, strict=True)]  # fmt: skip
    return examples[rows[0][:, None], rows[1][None, :]]


def example_keys(
    features: ImageFeatures, examples: np.ndarray, c_img: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys (K, D) and their class ids (K,): the fused token features (`ImageFeatures.fused`)
    of every window's patch cells that hold example pixels of exactly one class.

    examples: class ids at the resized image's size (-1: none). A cell counts when any of its
    pixels is an example; a cell holding two classes gives no key.
    """
    gh, gw = features.grid
    keys, classes = [], []
    for index, window in enumerate(features.windows):
        inside = examples[window.y0 : window.y1, window.x0 : window.x1]
        ys, xs = np.nonzero(inside >= 0)
        if not len(ys):
            continue
        height, width = inside.shape
        cells = (ys * gh // height) * gw + xs * gw // width
        pairs = np.unique(np.stack([cells, inside[ys, xs]], axis=1), axis=0)
        cells_seen, counts = np.unique(pairs[:, 0], return_counts=True)
        pairs = pairs[np.isin(pairs[:, 0], cells_seen[counts == 1])]
        tokens = features.fused(c_img, index, index + 1)[0]
        keys.append(tokens[torch.from_numpy(pairs[:, 0]).to(tokens.device)])
        classes.append(torch.from_numpy(pairs[:, 1]))
    if not keys:
        return torch.empty((0, features.groups.shape[-1])), torch.empty(0, dtype=torch.long)
    return torch.cat(keys), torch.cat(classes).to(keys[0].device)


def class_prototypes(keys: torch.Tensor, class_ids: torch.Tensor):
    """Per class, spherical k-means centres of its keys: one per KEYS_PER_PROTOTYPE keys, at
    most MAX_PROTOTYPES, started from evenly spaced keys (deterministic)."""
    centres, owners = [], []
    for c in torch.unique(class_ids).tolist():
        own = keys[class_ids == c]
        count = min(MAX_PROTOTYPES, math.ceil(len(own) / KEYS_PER_PROTOTYPE))
        centre = own[torch.linspace(0, len(own) - 1, count).round().long()]
        for _ in range(KMEANS_STEPS):
            nearest = (own @ centre.T).argmax(1)
            sums = torch.zeros_like(centre).index_add_(0, nearest, own)
            filled = torch.bincount(nearest, minlength=count) > 0
            centre = torch.where(filled[:, None], F.normalize(sums, dim=-1), centre)
        centres.append(centre)
        owners.append(torch.full((count,), c, dtype=torch.long))
    return torch.cat(centres), torch.cat(owners).to(keys.device)


class ExamplesTerm:
    """The examples' addition to the grid logits (module docstring), for one request."""

    def __init__(self, keys: torch.Tensor, class_ids: torch.Tensor, query_class, n_classes, params):
        self.prototypes = params.examples_prototypes
        if self.prototypes:
            keys, class_ids = class_prototypes(keys, class_ids)
        self.keys = keys
        self.class_ids = class_ids
        self.onehot = F.one_hot(class_ids, n_classes).float()
        self.n_classes = n_classes
        self.query_class = torch.as_tensor(query_class, device=keys.device)
        self.sharpness = params.examples_sharpness
        self.scale = params.examples_weight / params.logit_scale
        self.c_img = params.c_img

    def class_affinity(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., C) E_c of (..., D) L2-normalised token features."""
        affinity = torch.exp(-self.sharpness * (1 - tokens @ self.keys.T))
        if not self.prototypes:
            return (affinity @ self.onehot) / self.onehot.sum(0).clamp(min=1)
        index = self.class_ids.expand_as(affinity)
        out = affinity.new_zeros((*affinity.shape[:-1], self.n_classes))
        return out.scatter_reduce_(-1, index, affinity, reduce="amax", include_self=True)

    def for_windows(self, features: ImageFeatures):
        """term(start, stop) for `engine.features.stitched_logits`: (k, Q, gh, gw)."""

        def term(start: int, stop: int) -> torch.Tensor:
            tokens = features.fused(self.c_img, start, stop).to(self.keys.device)
            per_query = self.class_affinity(tokens)[..., self.query_class]
            k, q = per_query.shape[0], per_query.shape[-1]
            return self.scale * per_query.transpose(1, 2).reshape(k, q, *features.grid)

        return term


@dataclass(frozen=True, eq=False)
class ExamplesBank:
    """Example keys from annotated images, to apply to other images (`segment(examples=bank)`).

    keys: (K, D) float32 L2-normalised token features; class_ids: (K,) into class_names;
    model: the image tower's fingerprint; settings: the encoder settings the keys were made
    with (BANK_SETTINGS); images: how many images gave keys. Saved as one .npz (no pickle).
    """

    class_names: tuple[str, ...]
    keys: np.ndarray
    class_ids: np.ndarray
    model: str
    settings: dict
    images: int = 1

    def save(self, path) -> Path:
        path = Path(path)
        np.savez_compressed(
            path,
            format=np.array(BANK_FORMAT),
            class_names=np.array(self.class_names, dtype=str),
            keys=self.keys.astype(np.float32),
            class_ids=self.class_ids.astype(np.int64),
            model=np.array(self.model),
            settings=np.array(json.dumps(self.settings)),
            images=np.array(self.images),
        )
        return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")

    @classmethod
    def load(cls, path) -> ExamplesBank:
        try:
            with np.load(path, allow_pickle=False) as data:
                if int(data["format"]) != BANK_FORMAT:
                    raise ValueError(f"format {int(data['format'])}, expected {BANK_FORMAT}")
                return cls(
                    tuple(str(name) for name in data["class_names"]),
                    data["keys"].astype(np.float32),
                    data["class_ids"].astype(np.int64),
                    str(data["model"]),
                    json.loads(str(data["settings"])),
                    int(data["images"]),
                )
        except (OSError, KeyError, ValueError) as error:
            raise ValueError(f"{path} is not an examples bank: {error}") from None

    def describe(self) -> dict:
        """What a run record says about the bank (JSON-ready)."""
        return {"classes": list(self.class_names), "keys": len(self.keys), "images": self.images}

    def class_ids_for(self, class_names: list[str], model: str | None = None) -> np.ndarray:
        """The keys' class ids in a request with `class_names`; ValueError when the bank was
        made with another model (when `model` is given) or names a class the request does
        not have."""
        if model is not None and model != self.model:
            raise ValueError(
                "this examples bank was made with another model (its image-tower fingerprint "
                f"{self.model[:12]}... differs from this segmenter's {model[:12]}...)"
            )
        missing = [name for name in self.class_names if name not in class_names]
        if missing:
            raise ValueError(
                f"the examples bank has classes {', '.join(map(repr, missing))} that the request "
                f"does not ({', '.join(class_names)}); use the bank's class list"
            )
        return np.array([class_names.index(n) for n in self.class_names])[self.class_ids]


def bank_settings(params: Preset) -> dict:
    return {name: getattr(params, name) for name in BANK_SETTINGS}

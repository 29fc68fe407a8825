"""The user's corrections of a result as examples (docs/napari.md, "The annotation loop").

napari-free: layers are read through their `data` and `metadata` only.

A result's labels layer carries `Corrections` (`metadata["itaclip_corrections"]`): the labels as
the engine wrote them (after the run, then after each refinement) and the examples each
refinement was made with. The pixels whose labels differ from what the engine wrote are the
user's edits; with the earlier refinements' examples and an optional strokes layer they are
the examples of the next run (`refine_planes`), so no correction is ever forgotten. Undo is
followed without listening to it: the labels come from the kept write they differ least from
(after Ctrl-Z of a refinement, the write before it).

Strokes (a Labels layer painted from scratch, like the command line's strokes images): value
= class id + 1, 0 = no stroke.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from .labels import class_ids, label_ids

METADATA_KEY = "itaclip_corrections"
# Engine writes kept per labels layer: how many refinements Ctrl-Z can step back over and
# still find the examples they were made with.
WRITES_KEPT = 4


@dataclass
class EngineWrite:
    """Labels as the engine wrote them into a layer, and the examples they were made with."""

    labels: np.ndarray  # label ids, the layer's shape
    examples: np.ndarray | None  # class ids, -1 where there is no example


class Corrections:
    """The engine's writes into one labels layer, newest last (module doc)."""

    def __init__(self, labels: np.ndarray):
        self.writes = [EngineWrite(np.array(labels, copy=True), None)]

    @classmethod
    def of(cls, layer) -> Corrections:
        """The layer's corrections; a layer without any (read from a file) starts from its
        current labels, so only strokes count as examples on it."""
        corrections = layer.metadata.get(METADATA_KEY)
        if corrections is None:
            corrections = cls(np.asarray(layer.data))
            layer.metadata[METADATA_KEY] = corrections
        return corrections

    def origin(self, label_image: np.ndarray) -> int:
        """The index of the write the labels come from: the one they differ least from (the
        newest on a tie)."""
        differences = [
            np.count_nonzero(label_image != write.labels)
            if write.labels.shape == label_image.shape
            else label_image.size + 1
            for write in self.writes
        ]
        return min(range(len(differences)), key=lambda i: (differences[i], -i))

    def examples(self, label_image: np.ndarray, origin: int, n_classes: int, background: bool):
        """Class ids (-1: none) at the layer's shape: the examples of write `origin`, then
        every pixel edited since it (a pixel set to "unlabelled" is no example any more)."""
        write = self.writes[origin]
        examples = np.full(label_image.shape, -1, np.int32)
        if write.examples is not None:
            examples[...] = write.examples
        edited = label_image != write.labels
        values = class_ids(label_image[edited], background).astype(np.int32)
        _check_range(values, n_classes, "the labels layer holds label", 1 - int(background))
        examples[edited] = values
        return examples

    def add(self, origin: int, labels: np.ndarray, examples: np.ndarray) -> None:
        """Record a refinement made from write `origin` (the writes after it were undone)."""
        del self.writes[origin + 1 :]
        self.writes.append(EngineWrite(labels, examples))
        del self.writes[:-WRITES_KEPT]


def _check_range(values: np.ndarray, n_classes: int, what: str, offset: int) -> None:
    wrong = values[(values < -1) | (values >= n_classes)]
    if wrong.size:
        raise ValueError(
            f"{what} {int(wrong[0]) + offset}, which is no class of this result "
            f"({n_classes} classes: values {offset} to {n_classes - 1 + offset})"
        )


def strokes_to_class_ids(strokes, n_classes: int) -> np.ndarray:
    """Class ids (-1: none) from strokes of value class id + 1 (0: no stroke)."""
    array = np.asarray(strokes)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"strokes must be integer labels (class id + 1), got dtype {array.dtype}")
    values = array.astype(np.int32) - 1
    _check_range(values, n_classes, "the strokes hold value", 1)
    return values


def fit_to_planes(examples: np.ndarray, planes) -> np.ndarray:
    """Examples at the shape of a run's output (*output stack, H, W) of `planes` (a
    `planes.LayerPlanes`): as they are, or the run's plane of examples covering the whole
    stack (a strokes layer made with the image's shape for a current-plane run)."""
    output = (*planes.output_stack_shape, *planes.plane_shape)
    whole = (*planes.stack_shape, *planes.plane_shape)
    if examples.shape == output:
        return examples
    if planes.plane is not None and examples.shape == whole:
        return examples[planes.plane].reshape(output)
    raise ValueError(
        f"examples of shape {examples.shape} do not fit the result of {planes.name!r}: "
        f"expected {output}" + (f" or the whole stack {whole}" if planes.plane is not None else "")
    )


def pixel_examples(examples, planes, request) -> np.ndarray:
    """Class ids (-1: none) at the run's output shape (`fit_to_planes`) from what a user gives
    as examples: a result's labels layer (its corrections: the pixels changed since the engine
    wrote it), another Labels layer (strokes), or an array of class ids."""
    n_classes = request.n_classes
    info = getattr(examples, "metadata", {}).get("itaclip", {})
    if info.get("role") == "labels":
        if info["class_names"] != request.class_names:
            raise ValueError(
                f"the corrections of {examples.name!r} are labels of the classes "
                f"{info['class_names']}, not of {request.class_names}"
            )
        labels = np.asarray(examples.data)
        corrections = Corrections.of(examples)
        array = corrections.examples(
            labels, corrections.origin(labels), n_classes, info["background"]
        )
    elif hasattr(examples, "metadata"):  # a Labels layer of strokes
        array = strokes_to_class_ids(examples.data, n_classes)
    else:
        array = np.asarray(examples)
    return fit_to_planes(array, planes)


@dataclass
class Refinement:
    """A refinement's output for a labels layer: every plane's label ids, and the planes that
    were segmented again with their probabilities."""

    labels: np.ndarray
    examples: np.ndarray
    origin: int
    planes: list[tuple[int, ...]] = field(default_factory=list)  # output-stack indices
    probabilities: list[np.ndarray] = field(default_factory=list)  # (C, h, w) each
    timings: dict[str, float] = field(default_factory=dict)


def refine_planes(
    segmenter,
    planes,
    request,
    examples: np.ndarray,
    label_image: np.ndarray,
    origin: int,
    *,
    every_plane: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Refinement:
    """Segment again the planes holding examples (every plane with `every_plane`: the others
    through a bank of the edited planes' examples, `ITACLIP.examples_bank`), each with its own
    examples; the other planes keep `label_image`'s labels.

    planes: the `LayerPlanes` of the run; examples: class ids (-1: none) and label_image:
    label ids, both at the run's output shape. request: with the run's probability factor.
    """
    outputs = list(np.ndindex(planes.output_stack_shape))
    sources = planes.indices()
    edited = [k for k, out in enumerate(outputs) if (examples[out] >= 0).any()]
    if not edited:
        raise ValueError("no examples: paint on the labels layer or in an examples layer first")
    chosen = edited
    if every_plane and len(outputs) > 1:
        bank = segmenter.examples_bank(
            [planes.read(sources[k]) for k in edited],
            [examples[outputs[k]] for k in edited],
            request,
            progress=progress,
            cancel=cancel,
        )
        request = replace(request, examples=bank)
        chosen = range(len(outputs))
    refinement = Refinement(np.array(label_image, copy=True), examples, origin)
    for count, k in enumerate(chosen):
        report = progress
        if progress is not None and len(chosen) > 1:

            def report(done, total, stage, _plane=count + 1):
                progress(done, total, f"plane {_plane}/{len(chosen)}: {stage}")

        own = examples[outputs[k]]
        result = segmenter.segment(
            planes.read(sources[k]),
            request,
            examples=own if (own >= 0).any() else None,
            progress=report,
            cancel=cancel,
        )
        ids = label_ids(result.labels, request.n_classes, request.class_list.background)
        refinement.labels[outputs[k]] = ids
        refinement.planes.append(outputs[k])
        refinement.probabilities.append(result.probabilities)
        for stage, seconds in result.timings.items():
            refinement.timings[stage] = refinement.timings.get(stage, 0.0) + seconds
    return refinement

"""napari writer: a Labels layer made by ITACLIP, with the user's corrections, to a bundle."""

from __future__ import annotations

import numpy as np

from .bundle import save_bundle
from .labels import ResultRecord


def write_labels(path: str, data, meta: dict) -> list[str]:
    """Save the Labels layer `data` and its run's probabilities to `path` (`*.itaclip`).

    The probabilities, class names and parameters come from the layer's metadata, which
    `layers.result_to_layer_data` filled; the colours are the layer's current ones.
    """
    metadata = meta.get("metadata") or {}
    info = metadata.get("itaclip")
    if info is None or info.get("role") != "labels" or "itaclip_probabilities" not in metadata:
        raise ValueError(
            f"layer {meta.get('name')!r} was not made by napari-itaclip (its metadata lacks the "
            "class names and probabilities); save it in another format"
        )
    labels = np.asarray(data)
    n_ids = len(info["label_names"])
    colors = np.asarray(meta["colormap"].map(np.arange(n_ids)), float)
    record = ResultRecord(
        label_image=labels,
        probabilities=np.asarray(metadata["itaclip_probabilities"]),
        class_names=info["class_names"],
        background=info["background"],
        parameters=info["parameters"],
        colors=colors,
        probability_factor=info["probability_factor"],
        geometry={key: meta[key] for key in ("scale", "translate", "rotate", "shear", "affine")},
        name=info["source"],
    )
    return [str(save_bundle(path, record))]

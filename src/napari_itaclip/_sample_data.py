"""Sample images that scikit-image ships, each with a suggested class list.

The class list is in the layer's `metadata["itaclip_classes"]`; the dock widget fills its class
box with it when the image is picked and the box is empty (or still holds another suggestion).
"""

from __future__ import annotations

SUGGESTED_CLASSES = {
    "astronaut": "background\nastronaut, person\nflag",
    "coffee": "background, table\ncoffee cup, cup\nsaucer\nspoon",
    "chelsea": "background\ncat",
}


def _sample(name: str) -> list[tuple]:
    from skimage import data

    image = getattr(data, name)()
    return [
        (
            image,
            {"name": name, "rgb": True, "metadata": {"itaclip_classes": SUGGESTED_CLASSES[name]}},
        )
    ]


def astronaut() -> list[tuple]:
    """NASA portrait of astronaut Eileen Collins (512 x 512 RGB)."""
    return _sample("astronaut")


def coffee() -> list[tuple]:
    """A coffee cup on a saucer with a spoon (400 x 600 RGB)."""
    return _sample("coffee")


def chelsea() -> list[tuple]:
    """Chelsea the cat (300 x 451 RGB)."""
    return _sample("chelsea")

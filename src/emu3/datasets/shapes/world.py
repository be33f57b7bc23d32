"""The vocabulary of the Shapes world and what its words mean geometrically.

* `PALETTE` (color name -> RGB), `SHAPES`, `SIZES` (an object's box side as a fraction of the
  image side), `POSITIONS`, `RELATIONS`.
* `shape_mask`: which points of an object's box belong to the shape. The renderer draws with it
  and the analyzer in `emu3.eval.shapes` matches blobs against it.
* `position_holds`, `relation_holds`, `where`, `size_of`: when "on the left", "above", "top left"
  or "large" is true of object centres and box sides.

Coordinates are fractions of the image side: x to the right, y downwards, (0.5, 0.5) the centre.
The spatial predicates take a signed `margin`: positive demands room to spare (used when placing
objects, so that a slightly blurred picture still reads the same), zero is the judgement the
benchmark makes, negative is lenient (used to tell "clearly false" from "borderline").

This module holds no randomness, no pictures and no sentences.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (210, 25, 35),
    "green": (30, 170, 60),
    "blue": (30, 70, 230),
    "yellow": (250, 230, 40),
    "purple": (150, 50, 180),
    "orange": (245, 130, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: dict[str, float] = {"small": 0.2, "large": 0.34}
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")
RELATIONS: tuple[str, ...] = ("left_of", "right_of", "above", "below")

# A relation needs the centres this far apart along its axis (and further than across it).
MIN_RELATION_OFFSET = 0.1
_THIRD = 1.0 / 3.0
# Box sides above the geometric mean of the two sizes read as "large".
_SIZE_THRESHOLD = math.sqrt(SIZES["small"] * SIZES["large"])


def check_name(kind: str, value: str, allowed: Iterable[str]) -> str:
    """Return `value` if it is one of `allowed`, else raise a ValueError naming the choices."""
    if value not in allowed:
        raise ValueError(f"unknown {kind} {value!r}; the Shapes world knows {', '.join(allowed)}")
    return value


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of `shape` at box coordinates u (right) and v (down), both -1..1 across the box.

    Circles fill the inscribed disc, squares the whole box, triangles point up with the base on the
    box's bottom edge.
    """
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    if shape == "triangle":
        return (v <= 1.0) & (np.abs(u) <= (v + 1.0) / 2.0)
    raise ValueError(f"unknown shape {shape!r}; the Shapes world knows {', '.join(SHAPES)}")


def position_holds(position: str, x: float, y: float, margin: float = 0.0) -> bool:
    """Whether a centre (x, y) is on the left / right third, top / bottom third, or the centre cell."""
    if position == "left":
        return x < _THIRD - margin
    if position == "right":
        return x > 1.0 - _THIRD + margin
    if position == "top":
        return y < _THIRD - margin
    if position == "bottom":
        return y > 1.0 - _THIRD + margin
    if position == "center":
        half = 0.5 - _THIRD - margin
        return abs(x - 0.5) < half and abs(y - 0.5) < half
    raise ValueError(f"unknown position {position!r}; the Shapes world knows {', '.join(POSITIONS)}")


def relation_holds(relation: str, subject: tuple[float, float], other: tuple[float, float],
                   margin: float = 0.0) -> bool:
    """Whether `subject` is `relation` `other` ("left_of": subject left of other), given centres.

    The offset along the relation's axis must be at least MIN_RELATION_OFFSET and exceed the offset
    across it, so a diagonal neighbour is neither "left of" nor "above".
    """
    dx, dy = other[0] - subject[0], other[1] - subject[1]
    if relation == "left_of":
        along, across = dx, dy
    elif relation == "right_of":
        along, across = -dx, dy
    elif relation == "above":
        along, across = dy, dx
    elif relation == "below":
        along, across = -dy, dx
    else:
        raise ValueError(f"unknown relation {relation!r}; the Shapes world knows {', '.join(RELATIONS)}")
    return along >= MIN_RELATION_OFFSET + margin and along >= abs(across) + margin


def where(x: float, y: float, margin: float = 0.0) -> str | None:
    """Name the cell of a 3x3 grid holding (x, y): "top left", "top", "center", "bottom right"...

    None when the centre lies within `margin` of a cell border, where the answer is a guess.
    """
    def third(t: float, low: str, high: str) -> str | None:
        if min(abs(t - _THIRD), abs(t - 1.0 + _THIRD)) < margin:
            return None
        return low if t < _THIRD else high if t > 1.0 - _THIRD else ""

    row, col = third(y, "top", "bottom"), third(x, "left", "right")
    if row is None or col is None:
        return None
    return " ".join(p for p in (row, col) if p) or "center"


def size_of(side: float) -> str:
    """"small" or "large" for a box side given as a fraction of the image side."""
    return "large" if side > _SIZE_THRESHOLD else "small"

"""Structured scenes of the Shapes world: `Scene(background, objects=[Obj(shape, color, size, x, y)])`.

An `Obj` is one shape of one palette color and one size, centred at (x, y) in fractions of the image
side. A `Scene` checks the world's rules on construction: object colors differ from the background,
every object lies inside the picture, and no two objects' boxes overlap. Both convert to and from
plain dicts for manifests.

This module does not draw (see `render`), sample (see `layout`) or describe scenes in words.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from emu3.datasets.shapes.world import COLORS, SHAPES, SIZES, check_name


@dataclass(frozen=True)
class Obj:
    """One object: its shape, color, size name and centre (x right, y down, fractions of the side)."""

    shape: str
    color: str
    size: str
    x: float
    y: float

    def __post_init__(self) -> None:
        check_name("shape", self.shape, SHAPES)
        check_name("color", self.color, COLORS)
        check_name("size", self.size, tuple(SIZES))
        if not (0.0 <= self.x <= 1.0 and 0.0 <= self.y <= 1.0):
            raise ValueError(f"object centre ({self.x}, {self.y}) is outside the picture (0..1)")

    @property
    def side(self) -> float:
        """Side of the object's square box, as a fraction of the image side."""
        return SIZES[self.size]

    @property
    def box(self) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) of the object's box."""
        h = self.side / 2
        return (self.x - h, self.y - h, self.x + h, self.y + h)

    def inside(self, border: float = 0.0) -> bool:
        """Whether the box lies inside the picture with `border` to spare on every side."""
        x0, y0, x1, y1 = self.box
        return min(x0, y0) >= border and max(x1, y1) <= 1.0 - border

    def apart(self, other: Obj, gap: float = 0.0) -> bool:
        """Whether the two boxes are separated by at least `gap` horizontally or vertically."""
        a, b = self.box, other.box
        return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]

    def to_dict(self) -> dict[str, Any]:
        return {"shape": self.shape, "color": self.color, "size": self.size, "x": self.x, "y": self.y}


@dataclass(frozen=True)
class Scene:
    """A plain background of one palette color with non-overlapping objects on it."""

    background: str
    objects: tuple[Obj, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        check_name("background color", self.background, COLORS)
        object.__setattr__(self, "objects", tuple(self.objects))
        for i, o in enumerate(self.objects):
            if not isinstance(o, Obj):
                raise TypeError(f"scene object {i} is a {type(o).__name__}, not an Obj")
            if o.color == self.background:
                raise ValueError(f"object {i} ({o.color} {o.shape}) has the background's color")
            if not o.inside():
                raise ValueError(f"object {i} ({o.color} {o.shape}) sticks out of the picture")
            for j, p in enumerate(self.objects[:i]):
                if not o.apart(p):
                    raise ValueError(f"objects {j} and {i} overlap")

    def to_dict(self) -> dict[str, Any]:
        return {"background": self.background, "objects": [o.to_dict() for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        unknown = set(d) - {"background", "objects"}
        if unknown:
            raise ValueError(f"unknown scene keys {sorted(unknown)}")
        return cls(d["background"], tuple(Obj(**o) for o in d.get("objects", ())))

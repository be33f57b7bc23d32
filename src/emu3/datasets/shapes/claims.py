"""Claims: the atomic facts a Shapes caption asserts, each checkable against a picture's contents.

A claim is a frozen dataclass with a `category` (the benchmark scores each category separately)
and `holds(view)`, where `view` is anything with `.background` (a color name) and `.objects`
(items with `.color`, `.shape`, `.size`, `.x`, `.y`): a ground-truth `Scene` or the analyzer's
reading of a picture. Checking a claim on the scene it was sampled for is how the world tests
itself; checking it on a generated picture is how ShapesEval scores a model.

| claim                                   | holds when the picture has ...                        |
|-----------------------------------------|-------------------------------------------------------|
| ColorClaim(color, count)                | at least `count` objects of that color                 |
| ShapeClaim(shape, count)                | at least `count` objects of that shape                 |
| ObjectClaim(color, shape)               | an object of that color and shape                      |
| SizeClaim(color, shape, size, count)    | at least `count` such objects of that size             |
| CountClaim(color, shape, count)         | exactly `count` objects of that color and shape        |
| PositionClaim(color, shape, position)   | such an object in that part of the picture             |
| RelationClaim(color, shape, relation, other_color, other_shape) | one such object in that relation to another |
| BackgroundClaim(color)                  | that background color                                  |

This module does not produce claims from captions (see `description`) and does not look at pixels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Protocol, Sequence

from emu3.datasets.shapes.world import position_holds, relation_holds

CATEGORIES: tuple[str, ...] = ("color", "shape", "object", "size", "count", "position", "relation", "background")


class SeenObject(Protocol):
    color: str
    shape: str
    size: str
    x: float
    y: float


class View(Protocol):
    """What a claim is checked against: a Scene, or the analyzer's reading of a picture."""

    background: str
    objects: Sequence[SeenObject]


def _matching(view: View, color: str | None = None, shape: str | None = None, size: str | None = None):
    return [o for o in view.objects
            if (color is None or o.color == color) and (shape is None or o.shape == shape)
            and (size is None or o.size == size)]


@dataclass(frozen=True)
class Claim:
    """Base class: one checkable fact. Subclasses set `category` and implement `holds`."""

    category: ClassVar[str] = ""

    def holds(self, view: View) -> bool:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"claim": type(self).__name__, **asdict(self)}


@dataclass(frozen=True)
class ColorClaim(Claim):
    color: str
    count: int = 1
    category: ClassVar[str] = "color"

    def holds(self, view: View) -> bool:
        return len(_matching(view, color=self.color)) >= self.count


@dataclass(frozen=True)
class ShapeClaim(Claim):
    shape: str
    count: int = 1
    category: ClassVar[str] = "shape"

    def holds(self, view: View) -> bool:
        return len(_matching(view, shape=self.shape)) >= self.count


@dataclass(frozen=True)
class ObjectClaim(Claim):
    color: str
    shape: str
    category: ClassVar[str] = "object"

    def holds(self, view: View) -> bool:
        return bool(_matching(view, self.color, self.shape))


@dataclass(frozen=True)
class SizeClaim(Claim):
    color: str
    shape: str
    size: str
    count: int = 1
    category: ClassVar[str] = "size"

    def holds(self, view: View) -> bool:
        return len(_matching(view, self.color, self.shape, self.size)) >= self.count


@dataclass(frozen=True)
class CountClaim(Claim):
    color: str
    shape: str
    count: int
    category: ClassVar[str] = "count"

    def holds(self, view: View) -> bool:
        return len(_matching(view, self.color, self.shape)) == self.count


@dataclass(frozen=True)
class PositionClaim(Claim):
    color: str
    shape: str
    position: str
    category: ClassVar[str] = "position"

    def holds(self, view: View) -> bool:
        return any(position_holds(self.position, o.x, o.y) for o in _matching(view, self.color, self.shape))


@dataclass(frozen=True)
class RelationClaim(Claim):
    color: str
    shape: str
    relation: str
    other_color: str
    other_shape: str
    category: ClassVar[str] = "relation"

    def holds(self, view: View) -> bool:
        return any(a is not b and relation_holds(self.relation, (a.x, a.y), (b.x, b.y))
                   for a in _matching(view, self.color, self.shape)
                   for b in _matching(view, self.other_color, self.other_shape))


@dataclass(frozen=True)
class BackgroundClaim(Claim):
    color: str
    category: ClassVar[str] = "background"

    def holds(self, view: View) -> bool:
        return view.background == self.color

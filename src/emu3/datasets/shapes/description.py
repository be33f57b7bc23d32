"""What a caption says, as data: `Description(mentions, relation, background)` and its claims.

A `Mention` is one noun phrase ("a small red circle on the left", "two blue squares"). A
`Description` holds one to three mentions naming one to three objects in all, optionally a relation
between its two mentions ("... above ...") and optionally the background color. Construction
checks that the description can be drawn in the Shapes world: mentions name distinct (color, shape)
pairs so that every reference is unambiguous, positions are distinct and only on single objects,
and no object has the background's color. `Description.claims()` lists what it asserts.

This module does not write or read sentences (see `captions`) and does not place objects (see
`layout`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from emu3.datasets.shapes.claims import (BackgroundClaim, Claim, ColorClaim, CountClaim, ObjectClaim,
                                         PositionClaim, RelationClaim, ShapeClaim, SizeClaim)
from emu3.datasets.shapes.world import COLORS, POSITIONS, RELATIONS, SHAPES, SIZES, check_name

MAX_OBJECTS = 3


@dataclass(frozen=True)
class Mention:
    """One noun phrase: `count` objects of one color and shape, optionally of one size and place."""

    color: str
    shape: str
    size: str | None = None
    count: int = 1
    position: str | None = None

    def __post_init__(self) -> None:
        check_name("color", self.color, COLORS)
        check_name("shape", self.shape, SHAPES)
        if self.size is not None:
            check_name("size", self.size, tuple(SIZES))
        if self.position is not None:
            check_name("position", self.position, POSITIONS)
        if not 1 <= self.count <= MAX_OBJECTS:
            raise ValueError(f"a mention names 1 to {MAX_OBJECTS} objects, got {self.count}")
        if self.position is not None and self.count > 1:
            raise ValueError(f"a position ({self.position}) can only be given to a single object, "
                             f"not to {self.count} {self.color} {self.shape}s")


@dataclass(frozen=True)
class Description:
    """A caption's content: its mentions, an optional relation of mention 0 to mention 1, a background."""

    mentions: tuple[Mention, ...]
    relation: str | None = None
    background: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mentions", tuple(self.mentions))
        if not self.mentions:
            raise ValueError("a description mentions at least one object")
        if not 1 <= self.n_objects <= MAX_OBJECTS:
            raise ValueError(f"a Shapes scene has 1 to {MAX_OBJECTS} objects, this description names {self.n_objects}")
        pairs = [(m.color, m.shape) for m in self.mentions]
        if len(set(pairs)) != len(pairs):
            raise ValueError(f"mentions must name distinct (color, shape) pairs, got {pairs}")
        positions = [m.position for m in self.mentions if m.position is not None]
        if len(set(positions)) != len(positions):
            raise ValueError(f"two objects cannot both be placed {positions}")
        if self.relation is not None:
            check_name("relation", self.relation, RELATIONS)
            if len(self.mentions) != 2 or self.n_objects != 2 or positions:
                raise ValueError("a relation links exactly two single objects without positions")
        if self.background is not None:
            check_name("background color", self.background, COLORS)
            if any(m.color == self.background for m in self.mentions):
                raise ValueError(f"an object cannot have the background's color ({self.background})")

    @property
    def n_objects(self) -> int:
        return sum(m.count for m in self.mentions)

    def claims(self) -> tuple[Claim, ...]:
        """Everything the description asserts, colors and shapes first, in a fixed order."""
        colors, shapes = Counter(), Counter()
        for m in self.mentions:
            colors[m.color] += m.count
            shapes[m.shape] += m.count
        out: list[Claim] = [ColorClaim(c, n) for c, n in colors.items()]
        out += [ShapeClaim(s, n) for s, n in shapes.items()]
        for m in self.mentions:
            out.append(ObjectClaim(m.color, m.shape) if m.count == 1 else CountClaim(m.color, m.shape, m.count))
            if m.size is not None:
                out.append(SizeClaim(m.color, m.shape, m.size, m.count))
            if m.position is not None:
                out.append(PositionClaim(m.color, m.shape, m.position))
        if self.relation is not None:
            a, b = self.mentions
            out.append(RelationClaim(a.color, a.shape, self.relation, b.color, b.shape))
        if self.background is not None:
            out.append(BackgroundClaim(self.background))
        return tuple(out)

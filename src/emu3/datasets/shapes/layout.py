"""Place objects so that a scene satisfies a description: `scene_for(description, seed)`.

Objects get the mentioned sizes (random where unmentioned) and random centres, drawn again until
every position and relation holds with `PLACEMENT_MARGIN` to spare, every object stays
`BORDER` inside the picture and boxes stay `GAP` apart. The margins are why a slightly blurred or
re-encoded rendering still reads the same to the analyzer. An unmentioned background is a random
color that no object has. Same description and seed, same scene.

This module does not choose descriptions and does not draw.
"""

from __future__ import annotations

import random

from emu3.datasets.shapes.captions import caption_text
from emu3.datasets.shapes.description import Description
from emu3.datasets.shapes.scene import Obj, Scene
from emu3.datasets.shapes.world import COLORS, SIZES, position_holds, relation_holds

PLACEMENT_MARGIN = 0.04
BORDER = 0.03
GAP = 0.05
_TRIES_PER_OBJECT = 200
_RESTARTS = 30


class LayoutError(ValueError):
    """No arrangement satisfying a description was found."""


def _rng(seed: int | random.Random) -> random.Random:
    return seed if isinstance(seed, random.Random) else random.Random(seed)


def scene_for(description: Description, seed: int | random.Random) -> Scene:
    """A scene whose contents make every claim of `description` hold; deterministic in `seed`."""
    rng = _rng(seed)
    wanted = [(m, m.size or rng.choice(tuple(SIZES))) for m in description.mentions for _ in range(m.count)]
    for _ in range(_RESTARTS):
        placed: list[Obj] = []
        for m, size in wanted:
            obj = _place(m, size, placed, description, rng)
            if obj is None:
                break
            placed.append(obj)
        else:
            used = {o.color for o in placed}
            background = description.background or rng.choice([c for c in COLORS if c not in used])
            return Scene(background, tuple(placed))
    raise LayoutError(f"found no arrangement of {caption_text(description)!r} in {_RESTARTS} attempts")


def _place(mention, size: str, placed: list[Obj], description: Description, rng: random.Random) -> Obj | None:
    low = SIZES[size] / 2 + BORDER
    for _ in range(_TRIES_PER_OBJECT):
        obj = Obj(mention.shape, mention.color, size, rng.uniform(low, 1 - low), rng.uniform(low, 1 - low))
        if mention.position is not None and not position_holds(mention.position, obj.x, obj.y, PLACEMENT_MARGIN):
            continue
        if description.relation is not None and len(placed) == 1 and not relation_holds(
                description.relation, (placed[0].x, placed[0].y), (obj.x, obj.y), PLACEMENT_MARGIN):
            continue
        if all(obj.apart(p, GAP) for p in placed):
            return obj
    return None

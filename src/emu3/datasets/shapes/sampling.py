"""Draw random captions and matching scenes of the Shapes world from a seeded `random.Random`.

* `sample_description(rng, split)`: a random description of one of four kinds, all in the caption
  grammar, from the chosen split of compositions: a single object ("a small red circle on the
  left"), a count ("three white circles"), a relation ("a green triangle to the left of a purple
  circle") or a list ("a red circle and two blue squares").
* `sample_captioned_scene(rng, split)`: such a description with its caption text (varied wording)
  and a scene that satisfies it.

Every draw comes from `rng` only, so a seed fixes the result. This module does not draw pictures.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from emu3.datasets.shapes.captions import caption_text
from emu3.datasets.shapes.description import MAX_OBJECTS, Description, Mention
from emu3.datasets.shapes.layout import LayoutError, scene_for
from emu3.datasets.shapes.scene import Scene
from emu3.datasets.shapes.split import check_split, split_of
from emu3.datasets.shapes.world import COLORS, POSITIONS, RELATIONS, SHAPES, SIZES

KINDS: tuple[str, ...] = ("single", "count", "relation", "list")
_KIND_WEIGHTS = (3, 2, 3, 2)
_MAX_DRAWS = 1000


@dataclass(frozen=True)
class CaptionedScene:
    caption: str
    description: Description
    scene: Scene


def _size(rng: random.Random, p: float) -> str | None:
    return rng.choice(tuple(SIZES)) if rng.random() < p else None


def _pairs(rng: random.Random, n: int) -> list[tuple[str, str]]:
    pairs = [(c, s) for c in COLORS for s in SHAPES]
    return rng.sample(pairs, n)


def _draw(rng: random.Random) -> Description:
    kind = rng.choices(KINDS, _KIND_WEIGHTS)[0]
    relation = None
    if kind == "single":
        (color, shape), = _pairs(rng, 1)
        position = rng.choice(POSITIONS) if rng.random() < 0.5 else None
        mentions = [Mention(color, shape, _size(rng, 0.5), 1, position)]
    elif kind == "count":
        (color, shape), = _pairs(rng, 1)
        mentions = [Mention(color, shape, _size(rng, 0.4), rng.randint(2, MAX_OBJECTS))]
    elif kind == "relation":
        mentions = [Mention(c, s, _size(rng, 0.3)) for c, s in _pairs(rng, 2)]
        relation = rng.choice(RELATIONS)
    else:
        n = rng.randint(2, MAX_OBJECTS)
        counts = [1] * n if n == MAX_OBJECTS or rng.random() < 0.7 else rng.choice(([1, 2], [2, 1]))
        positions = rng.sample(POSITIONS, n) if rng.random() < 0.4 else [None] * n
        mentions = [Mention(c, s, _size(rng, 0.3), k, p if k == 1 else None)
                    for (c, s), k, p in zip(_pairs(rng, n), counts, positions)]
    background = None
    if rng.random() < 0.4:
        background = rng.choice([c for c in COLORS if all(m.color != c for m in mentions)])
    return Description(tuple(mentions), relation, background)


def sample_description(rng: random.Random, split: str = "train") -> Description:
    """A random description from `split` ("train" or "heldout") that can be laid out."""
    return sample_captioned_scene(rng, split).description


def sample_captioned_scene(rng: random.Random, split: str = "train") -> CaptionedScene:
    """A random description from `split`, its caption in varied wording, and a scene satisfying it."""
    check_split(split)
    for _ in range(_MAX_DRAWS):
        description = _draw(rng)
        if split_of(description) != split:
            continue
        try:
            scene = scene_for(description, rng)
        except LayoutError:
            continue
        return CaptionedScene(caption_text(description, rng), description, scene)
    raise RuntimeError(f"drew {_MAX_DRAWS} descriptions without one from the {split!r} split")

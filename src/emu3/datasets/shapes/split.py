"""The deterministic train / held-out split of compositions in the Shapes world.

A description is held out when it names a held-out (color, shape) pair, or relates two shapes in a
held-out configuration. Every held-out color and shape still appears in training, just never
together, and every held-out relation appears between other shapes, so held-out prompts measure
compositional generalisation. Relations are compared in one orientation: "a square below a
triangle" is the configuration "triangle above square".

The README's examples ("a red circle above a blue square", questions about circles) are training
compositions on purpose. This module does not sample anything; samplers ask it.
"""

from __future__ import annotations

from collections.abc import Iterable

from emu3.datasets.shapes.description import Description

SPLITS: tuple[str, ...] = ("train", "heldout")
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset({
    ("purple", "triangle"), ("orange", "circle"), ("green", "square"), ("yellow", "triangle"),
})
# (upper or left shape, "above" or "left_of", lower or right shape)
HELD_OUT_RELATIONS: frozenset[tuple[str, str, str]] = frozenset({
    ("triangle", "above", "square"), ("circle", "left_of", "triangle"),
})
_MIRROR = {"below": "above", "right_of": "left_of"}


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return split


def pairs_held_out(pairs: Iterable[tuple[str, str]]) -> bool:
    """Whether any (color, shape) pair is held out."""
    return any(p in HELD_OUT_PAIRS for p in pairs)


def relation_held_out(shape: str, relation: str, other_shape: str) -> bool:
    """Whether "<shape> <relation> <other_shape>" is a held-out configuration."""
    if relation in _MIRROR:
        shape, relation, other_shape = other_shape, _MIRROR[relation], shape
    return (shape, relation, other_shape) in HELD_OUT_RELATIONS


def split_of(description: Description) -> str:
    """"heldout" or "train"."""
    held = pairs_held_out((m.color, m.shape) for m in description.mentions)
    if description.relation is not None:
        a, b = description.mentions
        held = held or relation_held_out(a.shape, description.relation, b.shape)
    return "heldout" if held else "train"

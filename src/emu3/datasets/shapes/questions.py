"""Questions about a Shapes scene with short, certain answers: `questions_for(scene, rng, n)`, and
`place_questions(scene, rng, n)`: yes/no questions about where objects are, balanced per form.

Kinds of question (the `kind` field), with their answers:

* "color": "what color is the circle?" -> "red" (asked only of a shape the scene has once)
* "shape": "what shape is the red object?" -> "circle" (only of a color the scene has once)
  (both carry their object's (color, shape) as `QA.subject`)
* "count": "how many objects are there?", "how many squares are there?",
  "how many blue objects are there?" -> "2" (digits)
* "position": "where is the red circle?" -> "top left", "left", "center" ... (3x3 grid cells)
* "background": "what color is the background?" -> "black"
* "yes_no": "is there a blue square?", "is the red circle above the blue square?",
  "is the red circle on the left?" -> "yes" / "no", about as many of each
  (their `QA.form`: "presence", "relation", "position")

A question is only asked when its answer is unambiguous: the object it names is the only one of
its kind, and positions and relations hold (or fail) by at least `CERTAINTY_MARGIN`. Questions for
the training split never name a held-out composition (`emu3.datasets.shapes.split`): not even as a
"no" ("is there an orange circle?"), which would teach that the composition does not exist.
This module does not score answers (see `emu3.eval.shapes.vqa`).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from emu3.datasets.shapes.captions import POSITION_PHRASES, RELATION_PHRASES, with_article
from emu3.datasets.shapes.scene import Obj, Scene
from emu3.datasets.shapes.split import HELD_OUT_PAIRS, check_split, relation_held_out
from emu3.datasets.shapes.world import COLORS, POSITIONS, RELATIONS, SHAPES, position_holds, relation_holds, where

QUESTION_KINDS: tuple[str, ...] = ("color", "shape", "count", "position", "background", "yes_no")
YES_NO_FORMS: tuple[str, ...] = ("presence", "position", "relation")
CERTAINTY_MARGIN = 0.03


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    kind: str
    subject: tuple[str, str] | None = None  # (color, shape) of the object a color or shape question is about
    form: str | None = None  # of a yes/no question: one of YES_NO_FORMS


def _yes_no(holds_strictly: bool, holds_leniently: bool) -> str | None:
    """"yes" when true with room to spare, "no" when false even leniently, None in between."""
    return "yes" if holds_strictly else None if holds_leniently else "no"


def _place_yes_no(unique: list[Obj], training: bool) -> list[tuple[str, str, str]]:
    """(form, question, answer) for every certain yes/no question about where the `unique` objects are:
    form "position" ("is the red circle on the left?") or "relation" ("is the red circle above the blue
    square?"); for training, no relation between shapes whose relation is held out. Draws nothing."""
    m = CERTAINTY_MARGIN
    out = []
    for o in unique:
        for p in POSITIONS:
            answer = _yes_no(position_holds(p, o.x, o.y, m), position_holds(p, o.x, o.y, -m))
            if answer is not None:
                out.append(("position", f"is the {o.color} {o.shape} {POSITION_PHRASES[p][0]}?", answer))
        for other in unique:
            if other is o or (training and any(relation_held_out(o.shape, r, other.shape) for r in RELATIONS)):
                continue
            for r in RELATIONS:
                a, b = (o.x, o.y), (other.x, other.y)
                answer = _yes_no(relation_holds(r, a, b, m), relation_holds(r, a, b, -m))
                if answer is not None:
                    out.append(("relation", f"is the {o.color} {o.shape} {RELATION_PHRASES[r][0]} "
                                            f"the {other.color} {other.shape}?", answer))
    return out


def _unique_objects(scene: Scene) -> list[Obj]:
    """The objects no other object of the scene shares both color and shape with (nameable unambiguously)."""
    pairs = Counter((o.color, o.shape) for o in scene.objects)
    return [o for o in scene.objects if pairs[o.color, o.shape] == 1]


def _candidates(scene: Scene, rng: random.Random, split: str) -> list[QA]:
    objs = scene.objects
    shapes = Counter(o.shape for o in objs)
    colors = Counter(o.color for o in objs)
    pairs = Counter((o.color, o.shape) for o in objs)
    unique = _unique_objects(scene)
    m = CERTAINTY_MARGIN
    out = [QA("what color is the background?", scene.background, "background"),
           QA("how many objects are there?", str(len(objs)), "count")]
    out += [QA(f"what color is the {o.shape}?", o.color, "color", (o.color, o.shape))
            for o in objs if shapes[o.shape] == 1]
    out += [QA(f"what shape is the {o.color} object?", o.shape, "shape", (o.color, o.shape))
            for o in objs if colors[o.color] == 1]
    out += [QA(f"how many {s}s are there?", str(shapes[s]), "count") for s in SHAPES]
    out += [QA(f"how many {c} objects are there?", str(colors[c]), "count") for c in colors]
    for o in unique:
        cell = where(o.x, o.y, m)
        if cell is not None:
            out.append(QA(f"where is the {o.color} {o.shape}?", cell, "position"))

    yes, no = [], []
    training = split == "train"
    absent = [(c, s) for c in COLORS for s in SHAPES if c != scene.background and (c, s) not in pairs
              and not (training and (c, s) in HELD_OUT_PAIRS)]
    yes += [(f"is there {with_article(f'{c} {s}')}?", "presence") for c, s in pairs]
    no += [(f"is there {with_article(f'{c} {s}')}?", "presence")
           for c, s in rng.sample(absent, min(len(absent), len(pairs)))]
    for form, question, answer in _place_yes_no(unique, training):
        (yes if answer == "yes" else no).append((question, form))
    k = min(len(yes), len(no)) or 1  # balance yes and no
    out += [QA(q, "yes", "yes_no", form=form) for q, form in rng.sample(yes, min(k, len(yes)))]
    out += [QA(q, "no", "yes_no", form=form) for q, form in rng.sample(no, min(k, len(no)))]
    return out


def questions_for(scene: Scene, rng: random.Random, n: int = 3, split: str = "heldout") -> list[QA]:
    """`n` distinct questions about `scene` (fewer if it has fewer), kinds mixed, drawn from `rng`;
    for the "train" split, none names a held-out composition."""
    if n < 1:
        raise ValueError(f"ask at least one question, got n={n}")
    by_kind: dict[str, list[QA]] = {}
    for qa in _candidates(scene, rng, check_split(split)):
        by_kind.setdefault(qa.kind, []).append(qa)
    kinds = [k for k in QUESTION_KINDS if k in by_kind]
    picked: list[QA] = []
    while len(picked) < n and kinds:
        kind = rng.choice(kinds)  # kinds first, so that rare kinds are not drowned by frequent ones
        qa = by_kind[kind].pop(rng.randrange(len(by_kind[kind])))
        picked.append(qa)
        if not by_kind[kind]:
            kinds.remove(kind)
    return picked


def place_questions(scene: Scene, rng: random.Random, n: int = 4, split: str = "heldout") -> list[QA]:
    """Up to `n` distinct yes/no questions (kind "yes_no") about where `scene`'s objects are, drawn from
    `rng` in yes/no pairs of one form each ("is the red circle on the left?", "is the red circle above
    the blue square?"): per form, as many "yes" as "no" in expectation. `questions_for` mixes these
    with "is there ...?" and balances yes and no over all of them, not per form (60% of the position
    questions in the bundled model's training sets are "no"); a model trained on that mix answered
    "no" to nearly all of them. This set teaches the grounding.
    Fewer (possibly none) when the scene has fewer pairs; for the "train" split, none names a
    held-out relation."""
    if n < 1:
        raise ValueError(f"ask at least one question, got n={n}")
    asked = _place_yes_no(_unique_objects(scene), check_split(split) == "train")
    pairs = []
    for form in ("position", "relation"):
        yes = [q for f, q, answer in asked if f == form and answer == "yes"]
        no = [q for f, q, answer in asked if f == form and answer == "no"]
        rng.shuffle(yes)
        rng.shuffle(no)
        for y, x in zip(yes, no):
            pair = (QA(y, "yes", "yes_no", form=form), QA(x, "no", "yes_no", form=form))
            pairs.append(pair if rng.random() < 0.5 else pair[::-1])
    rng.shuffle(pairs)
    return [qa for pair in pairs for qa in pair][:n]

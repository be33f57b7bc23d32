"""Score short answers to Shapes questions: `normalize_answer`, `answer_matches`, `vqa_accuracy`.

Answers are compared after normalisation: lower case, punctuation and articles ("a", "an", "the")
removed, number words up to twenty written as digits ("two" -> "2"), a few synonyms mapped to the
world's words ("middle" -> "center", "upper" -> "top", "big" -> "large"), plurals of shape names
made singular, the words of the world's place phrases dropped ("on the left side" -> "left", "in the
center" -> "center"), an edge cell named with "center" said as the edge ("center left" -> "left"),
whitespace collapsed. A prediction matches when it equals the expected answer
after normalisation, or the answer behind a stock lead ("it is red", "there are 2", "the answer
is yes"). Nothing fuzzier: a model that says "red and blue" to "what color is the circle?" is wrong.

This module does not ask questions (see `emu3.datasets.shapes.questions`) or run a model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from emu3.datasets.shapes.world import SHAPES

_NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                 "sixteen seventeen eighteen nineteen twenty").split()
_REWRITES = {word: str(i) for i, word in enumerate(_NUMBER_WORDS)}
_REWRITES |= {"none": "0", "middle": "center", "centre": "center", "upper": "top",
              "lower": "bottom", "big": "large", "little": "small", "yeah": "yes", "yep": "yes", "nope": "no"}
_REWRITES |= {shape + "s": shape for shape in SHAPES}
_DROPPED = {"a", "an", "the", "on", "in", "at", "side"}  # articles, and the place phrases' other words
_EDGES = {"top", "bottom", "left", "right"}
_PUNCTUATION = re.compile(r"[^\w\s]")


def normalize_answer(text: str) -> str:
    """Canonical form of a short answer: "Two." -> "2", "In the Middle" -> "center", "Yes!" -> "yes"."""
    words = _PUNCTUATION.sub(" ", str(text).lower()).split()
    words = [_REWRITES.get(w, w) for w in words if w not in _DROPPED]
    if len(words) == 2 and "center" in words and set(words) - {"center"} <= _EDGES:
        words = [w for w in words if w != "center"]  # "center left" is the cell "left"
    return " ".join(words)


_LEADS = tuple(normalize_answer(lead) for lead in ("it is", "it's", "there is", "there are", "the answer is"))


def answer_matches(prediction: str, answer: str) -> bool:
    """Whether a predicted answer says the expected one (see the module docstring for the rule)."""
    pred, gold = normalize_answer(prediction), normalize_answer(answer)
    if pred == gold:
        return True
    return any(pred == f"{lead} {gold}" for lead in _LEADS)


def vqa_accuracy(pairs: Iterable[tuple[str, str]]) -> float:
    """Fraction of (prediction, answer) pairs that match; raises ValueError on no pairs."""
    results = [answer_matches(p, a) for p, a in pairs]
    if not results:
        raise ValueError("no answers to score")
    return sum(results) / len(results)

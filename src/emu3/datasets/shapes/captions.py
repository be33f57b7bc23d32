"""Captions of the Shapes world: `caption_text(description, rng)` writes one, `parse_caption` reads one.

The grammar (lower case; a trailing period is allowed):

    caption  := [lead] body [background]
    lead     := "a picture of " | "an image of " | "a drawing of "
    body     := mention [position]                       "a small red circle on the left"
              | mention relation mention                 "a red circle above a blue square"
              | mention {", " mention} " and " mention   "a red circle, two blue squares and ..."
    mention  := ("a" | "an" | "two" | "three") [size] color shape["s"] [position]
    background := " on a <color> background" | " against a <color> background"

Synonyms ("little", "big", "in the middle", "under", ...) come from the phrase tables below, which
both functions share, so every caption `caption_text` writes parses back to its description.
With `rng=None` the canonical wording is used. Parsing raises `CaptionError` naming the part of
the sentence it could not read.

This module does not sample descriptions (see `sampling`) and does not place objects.
"""

from __future__ import annotations

import random
import re

from emu3.datasets.shapes.description import Description, Mention
from emu3.datasets.shapes.world import COLORS, SHAPES

# Canonical phrase first in every tuple.
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little"), "large": ("large", "big")}
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "on the left side"),
    "right": ("on the right", "on the right side"),
    "top": ("at the top",),
    "bottom": ("at the bottom",),
    "center": ("in the center", "in the middle"),
}
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left_of": ("to the left of", "left of"),
    "right_of": ("to the right of", "right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
COUNT_WORDS: dict[int, str] = {1: "a", 2: "two", 3: "three"}
LEADS: tuple[str, ...] = ("", "a picture of ", "an image of ", "a drawing of ")
BACKGROUND_PHRASES: tuple[str, ...] = ("on {} background", "against {} background")


class CaptionError(ValueError):
    """A caption outside the Shapes grammar."""


def with_article(word: str) -> str:
    """"a red circle", "an orange circle"."""
    return ("an " if word[0] in "aeiou" else "a ") + word


def _pick(options: tuple[str, ...], rng: random.Random | None) -> str:
    return options[0] if rng is None else rng.choice(options)


def mention_text(m: Mention, rng: random.Random | None = None) -> str:
    """One noun phrase, e.g. "a small red circle on the left" or "two blue squares"."""
    words = [_pick(SIZE_WORDS[m.size], rng)] if m.size else []
    words += [m.color, m.shape + ("s" if m.count > 1 else "")]
    phrase = " ".join(words)
    phrase = with_article(phrase) if m.count == 1 else f"{COUNT_WORDS[m.count]} {phrase}"
    if m.position is not None:
        phrase += " " + _pick(POSITION_PHRASES[m.position], rng)
    return phrase


def caption_text(description: Description, rng: random.Random | None = None) -> str:
    """A sentence saying exactly what `description` says; `rng` varies the wording, not the meaning."""
    parts = [mention_text(m, rng) for m in description.mentions]
    if description.relation is not None:
        body = f"{parts[0]} {_pick(RELATION_PHRASES[description.relation], rng)} {parts[1]}"
    elif len(parts) == 1:
        body = parts[0]
    else:
        body = ", ".join(parts[:-1]) + " and " + parts[-1]
    if description.background is not None:
        body += " " + _pick(BACKGROUND_PHRASES, rng).format(with_article(description.background))
    return _pick(LEADS, rng) + body


def _alternation(phrases) -> str:
    # Longest first, so that "to the left of" wins over "left of".
    return "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True))


_WORD_TO_SIZE = {w: size for size, words in SIZE_WORDS.items() for w in words}
_PHRASE_TO_POSITION = {p: pos for pos, phrases in POSITION_PHRASES.items() for p in phrases}
_PHRASE_TO_RELATION = {p: rel for rel, phrases in RELATION_PHRASES.items() for p in phrases}
_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "1": 1, "2": 2, "3": 3}

_MENTION = re.compile(
    rf"^(?P<number>{_alternation(_NUMBERS)}) (?:(?P<size>{_alternation(_WORD_TO_SIZE)}) )?"
    rf"(?P<color>{_alternation(COLORS)}) (?P<shape>{_alternation(SHAPES)})(?P<plural>s?)"
    rf"(?: (?P<position>{_alternation(_PHRASE_TO_POSITION)}))?$")
_BACKGROUND = re.compile(
    rf"^(?P<body>.+?),? (?:{_alternation(p.split(' ')[0] for p in BACKGROUND_PHRASES)}) an? "
    rf"(?P<color>\w+) background$")
_RELATION = re.compile(rf" (?P<relation>{_alternation(_PHRASE_TO_RELATION)}) ")
_LIST_SEPARATOR = re.compile(r",? and |, ")


def _parse_mention(text: str, caption: str) -> Mention:
    match = _MENTION.match(text)
    if match is None:
        raise CaptionError(f"cannot read {text!r} in caption {caption!r}: expected a phrase like "
                           f"'a small red circle' or 'two blue squares' (colors: {', '.join(COLORS)}; "
                           f"shapes: {', '.join(SHAPES)})")
    count = _NUMBERS[match["number"]]
    if (count > 1) != bool(match["plural"]):
        raise CaptionError(f"{text!r} in caption {caption!r}: the number and the noun disagree")
    size = match["size"] and _WORD_TO_SIZE[match["size"]]
    position = match["position"] and _PHRASE_TO_POSITION[match["position"]]
    try:
        return Mention(match["color"], match["shape"], size, count, position)
    except ValueError as e:
        raise CaptionError(f"{text!r} in caption {caption!r}: {e}") from None


def parse_caption(text: str) -> Description:
    """The description a caption of the Shapes grammar says; raises CaptionError for anything else."""
    caption = " ".join(str(text).lower().split()).rstrip(".")
    body = caption
    for lead in LEADS[1:]:
        if body.startswith(lead):
            body = body[len(lead):]
            break
    background = None
    match = _BACKGROUND.match(body)
    if match is not None:
        body, background = match["body"], match["color"]
        if background not in COLORS:
            raise CaptionError(f"unknown background color {background!r} in caption {caption!r}")
    relation = None
    match = _RELATION.search(body)
    if match is not None:
        relation = _PHRASE_TO_RELATION[match["relation"]]
        texts = [body[:match.start()], body[match.end():]]
    else:
        texts = _LIST_SEPARATOR.split(body)
    mentions = tuple(_parse_mention(t.strip(), caption) for t in texts)
    try:
        return Description(mentions, relation, background)
    except ValueError as e:
        raise CaptionError(f"caption {caption!r} cannot be drawn: {e}") from None

"""Emu3.5 prompt layouts as token ids (emu35_spec sections 4.3 and 5.1), and the size-header ids.

Conditional prompt of a task (the reference images `{images}` are serialized code grids):

    bos "You are a helpful assistant for {task} task.{extra} USER: {question}" {images} " ASSISTANT: " bss
    bos "You are a helpful assistant for x2i task. USER: " {images} "{question} ASSISTANT: " bss

and the unconditional prompt used for guidance ("no_text": the same images, no text, no task):

    bos "You are a helpful assistant. USER: " {images} " ASSISTANT: " bss    (two spaces with no image)

An image is `boi "{h}*{w}" img` then its rows of visual ids with eol *between* rows and eoi after
the last row: h * (w + 1) ids after img, and no eof (unlike Emu3). `chat_prompt` is our own
understanding layout for Emu3.5 (no official one exists): the unconditional template with the
question after the images. Text pieces are encoded with special-token strings as plain text.

This module builds ids only; it does not run models or read images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from emu3.emu35.tasks import TaskSettings
from emu3.prompting import Piece, image_header, parse_image, render
from emu3.tokenizer import Tokenizer
from emu3.vocab import EMU35, EMU35_MARKERS, Emu35Markers, Vocab

SYSTEM_PROMPT = "You are a helpful assistant."


@dataclass(frozen=True)
class SizeHeader:
    """The ids that spell an image size `h*w`: one per decimal digit, and the '*' between."""

    digits: tuple[int, ...]  # ids of "0" ... "9"
    star: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer) -> "SizeHeader":
        pieces = [tokenizer.encode(c) for c in "0123456789*"]
        if any(len(p) != 1 for p in pieces):
            raise ValueError("this tokenizer does not spell digits and '*' as single tokens; it is not Emu3.5's")
        return cls(tuple(p[0] for p in pieces[:10]), pieces[10][0])

    def ids(self, h: int, w: int) -> list[int]:
        """The ids of `f"{h}*{w}"` (the Qwen pre-tokenizer splits every digit on its own)."""
        if h < 1 or w < 1:
            raise ValueError(f"an image grid needs positive sides, got {h}x{w}")
        return [self.digits[int(c)] for c in str(h)] + [self.star] + [self.digits[int(c)] for c in str(w)]


def image_ids(tokenizer: Tokenizer, codes: torch.Tensor, vocab: Vocab = EMU35) -> list[int]:
    """One serialized image: `boi h*w img`, rows of visual ids joined by eol, then eoi."""
    if codes.ndim != 2 or codes.numel() == 0:
        raise ValueError(f"expected a non-empty (h, w) grid of codes, got shape {tuple(codes.shape)}")
    h, w = codes.shape
    rows = torch.cat([vocab.code_to_id(codes.long().cpu()), torch.full((h, 1), vocab.eol)], dim=1)  # (h, w + 1)
    return image_header(tokenizer, h, w, vocab) + rows.flatten().tolist()[:-1] + [vocab.eoi]


def parse_image_ids(block: Sequence[int], header: SizeHeader, vocab: Vocab = EMU35) -> torch.Tensor | None:
    """The (h, w) code grid of the ids between boi and eoi, or None unless it is exactly the
    `h*w` grid its header announces (an image cut short or malformed is dropped)."""
    block = list(block)
    if vocab.img not in block:
        return None
    size = block[: block.index(vocab.img)]
    digit = {t: i for i, t in enumerate(header.digits)}
    if size.count(header.star) != 1 or any(t not in digit for t in size if t != header.star):
        return None
    star = size.index(header.star)
    if star == 0 or star == len(size) - 1:
        return None
    h, w = (int("".join(str(digit[t]) for t in part)) for part in (size[:star], size[star + 1:]))
    grid = parse_image(block + [vocab.eol], vocab)  # the shared parser wants every row closed by eol
    return grid if grid is not None and tuple(grid.shape) == (h, w) else None


def _wrap(body: list[Piece], vocab: Vocab, markers: Emu35Markers) -> list[Piece]:
    return [[vocab.bos]] + body + [[markers.bss]]


def task_prompt(tokenizer: Tokenizer, task: TaskSettings, question: str, images: Sequence[torch.Tensor] = (), *,
                vocab: Vocab = EMU35, markers: Emu35Markers = EMU35_MARKERS) -> list[int]:
    """The conditional prompt of `task` for a question and its reference images (code grids)."""
    serialized = [image_ids(tokenizer, g, vocab) for g in images]
    system = f"You are a helpful assistant for {task.name} task.{task.extra}"
    if serialized and task.images_first:
        body: list[Piece] = [f"{system} USER: ", *serialized, f"{question} ASSISTANT: "]
    else:
        body = [f"{system} USER: {question}", *serialized, " ASSISTANT: "]
    return render(tokenizer, _wrap(body, vocab, markers))


def uncond_prompt(tokenizer: Tokenizer, images: Sequence[torch.Tensor] = (), *, vocab: Vocab = EMU35,
                  markers: Emu35Markers = EMU35_MARKERS) -> list[int]:
    """The unconditional ("no_text") prompt: the reference images without any text or task."""
    serialized = [image_ids(tokenizer, g, vocab) for g in images]
    return render(tokenizer, _wrap([f"{SYSTEM_PROMPT} USER: ", *serialized, " ASSISTANT: "], vocab, markers))


def chat_prompt(tokenizer: Tokenizer, question: str, images: Sequence[torch.Tensor] = (), *, vocab: Vocab = EMU35,
                markers: Emu35Markers = EMU35_MARKERS) -> list[int]:
    """Our understanding layout: `bos "You are a helpful assistant. USER: " {images} "{question} ASSISTANT: " bss`."""
    serialized = [image_ids(tokenizer, g, vocab) for g in images]
    body: list[Piece] = [f"{SYSTEM_PROMPT} USER: ", *serialized, f"{question} ASSISTANT: "]
    return render(tokenizer, _wrap(body, vocab, markers))


def howto_question(question: str, steps: int | None) -> str:
    """The howto question, with the official control phrase when a number of steps is asked for."""
    if steps is None:
        return question
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return f"{question} Please provide {steps} steps for the task."


__all__ = ["SYSTEM_PROMPT", "SizeHeader", "image_ids", "parse_image_ids", "task_prompt", "uncond_prompt",
           "chat_prompt", "howto_question"]

"""Training sequences with their per-token loss masks, one builder per task, from text and codes.

* text-to-image (the official recipe, spec 8.2): `bos {caption} {image block}`, no eos; loss on the
  visual-code tokens only (not eol/eof/eoi, not the text). The caption is `prompt_span`, so that
  caption dropout can delete it at training time and leave exactly the `bos {empty caption}` layout.
* video: the same with a clip (a `(t, h, w)` grid: one block, rows per latent frame, each frame
  closed by eof, then eoi) or with frames as consecutive image blocks; loss on visual codes.
* VQA / chat: the official understanding layout (`prompting.chat_prompt`) with every answer
  followed by eos; loss on the answer tokens and their eos only.

Layouts come from `emu3.prompting`, so training sees exactly what inference builds. This module
reads no files and holds no model; ids and masks are plain Python lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from emu3.prompting import Turn, chat_prompt, image_header, image_tokens
from emu3.tokenizer import Tokenizer
from emu3.vocab import EMU3, Vocab

TASKS = ("t2i", "video", "vqa")


@dataclass
class Example:
    """One training sequence. `loss_mask[i]` says whether token i is predicted (from token i - 1)."""

    ids: list[int]
    loss_mask: list[int]
    task: str
    prompt_span: tuple[int, int] = (0, 0)  # [start, end) of the droppable caption; (0, 0): none
    grids: list[tuple[int, int, int]] = field(default_factory=list)  # (frames, h, w) per visual block

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.loss_mask):
            raise ValueError(f"{len(self.ids)} ids but {len(self.loss_mask)} mask entries")
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; known: {TASKS}")
        start, end = self.prompt_span
        if any(self.loss_mask[start:end]):
            raise ValueError("the droppable prompt span must hold no supervised token")


def visual_block(tokenizer: Tokenizer, codes: torch.Tensor, vocab: Vocab = EMU3) -> list[int]:
    """An image block for (h, w) codes; for a clip (t, h, w), one block with each frame closed by eof."""
    if codes.ndim == 2:
        return image_tokens(tokenizer, codes, vocab)
    if codes.ndim != 3:
        raise ValueError(f"expected (h, w) or (t, h, w) codes, got shape {tuple(codes.shape)}")
    header = image_header(tokenizer, codes.shape[1], codes.shape[2], vocab)
    # image_tokens(frame) = header + rows + eof + eoi: keep each frame's `rows + eof`.
    frames = [image_tokens(tokenizer, frame, vocab)[len(header):-1] for frame in codes]
    return header + [t for frame in frames for t in frame] + [vocab.eoi]


def _grid(codes: torch.Tensor) -> tuple[int, int, int]:
    return (1, *codes.shape) if codes.ndim == 2 else tuple(codes.shape)


def text_to_visual(tokenizer: Tokenizer, caption: str, blocks: Sequence[torch.Tensor], *, task: str = "t2i",
                   vocab: Vocab = EMU3) -> Example:
    """`bos {caption} {block}...` with the loss on visual codes; each block is (h, w) or a (t, h, w) clip."""
    if not blocks:
        raise ValueError("text_to_visual needs at least one image or clip")
    text = tokenizer.encode(caption)
    ids = [vocab.bos] + text + [t for codes in blocks for t in visual_block(tokenizer, codes, vocab)]
    mask = [int(vocab.visual_base <= t < vocab.visual_end) for t in ids]
    return Example(ids, mask, task, (1, 1 + len(text)), [_grid(c) for c in blocks])


def chat(tokenizer: Tokenizer, images: Sequence[torch.Tensor], qa: Sequence[tuple[str, str]],
         vocab: Vocab = EMU3) -> Example:
    """The understanding layout, images in the first turn; loss on every answer and its eos."""
    if not qa:
        raise ValueError("a chat example needs at least one question and answer")
    answers = [tokenizer.encode(a) for _, a in qa]
    turns = [Turn(q, list(images) if i == 0 else [], answer)
             for i, ((q, _), answer) in enumerate(zip(qa, answers, strict=True))]
    ids: list[int] = []
    mask: list[int] = []
    for i, answer in enumerate(answers):
        prefix = chat_prompt(tokenizer, turns[: i + 1], vocab=vocab)
        if prefix[: len(ids)] != ids:  # the layout must extend turn by turn; say so if it ever stops
            raise ValueError("chat_prompt is not prefix-stable across turns; cannot place the answer masks")
        mask += [0] * (len(prefix) - len(ids)) + [1] * (len(answer) + 1)
        ids = prefix + answer + [vocab.eos]
    return Example(ids, mask, "vqa", (0, 0), [_grid(c) for c in images])

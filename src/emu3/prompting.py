"""Prompt layouts of the Emu3 family, built as token ids, and the parse of generated ids.

A prompt is a list of pieces: text (encoded with special-token strings kept as plain text) or ids
(control tokens, serialized images). Adjacent text pieces are joined before encoding, so the BPE
splits exactly as the original string templates did. Image codes stay integers end to end.
Layouts (spec section 5): generation `bos {prompt}{positive} boi h*w img`; understanding
`bos You are a helpful assistant. USER: {images}{text}. ASSISTANT:`; Stage1 captioning
`bos {images}{text}`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence, Union

import torch

from emu3.tokenizer import Tokenizer
from emu3.vocab import EMU3, Vocab

POSITIVE_PROMPT = " masterpiece, film grained, best quality."
NEGATIVE_PROMPT = (
    "lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, "
    "worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, username, blurry."
)
SYSTEM_PROMPT = "You are a helpful assistant."

Piece = Union[str, list[int]]


def render(tokenizer: Tokenizer, pieces: Sequence[Piece]) -> list[int]:
    """Ids of a sequence of text and id pieces; consecutive texts are encoded as one string."""
    ids: list[int] = []
    text: list[str] = []
    for piece in pieces:
        if isinstance(piece, str):
            text.append(piece)
            continue
        if text:
            ids += tokenizer.encode("".join(text))
            text = []
        ids += [int(i) for i in piece]
    if text:
        ids += tokenizer.encode("".join(text))
    return ids


def parse_ratio(ratio: str) -> tuple[int, int]:
    """"W:H" -> (W, H), with a clear error for anything else."""
    parts = ratio.split(":")
    try:
        w, h = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"ratio must look like 'W:H' with positive integers (e.g. 16:9), got {ratio!r}") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"ratio must look like 'W:H' with positive integers (e.g. 16:9), got {ratio!r}")
    if max(w, h) / min(w, h) > 5:
        raise ValueError(f"ratio {ratio} is more extreme than 5:1, which the vision tokenizer does not support")
    return w, h


def grid_for_ratio(ratio: str, image_area: int, spatial_factor: int = 8) -> tuple[int, int]:
    """The (rows, columns) token grid for a "W:H" ratio and a pixel area (Python's round, as the original)."""
    if image_area < spatial_factor**2:
        raise ValueError(f"image_area {image_area} is smaller than one {spatial_factor}x{spatial_factor} token")
    w_r, h_r = parse_ratio(ratio)
    scale = math.sqrt(image_area / (h_r * w_r))
    h = int(round(h_r * scale / spatial_factor))
    w = int(round(w_r * scale / spatial_factor))
    if h < 1 or w < 1:
        raise ValueError(f"ratio {ratio} at image_area {image_area} gives an empty {h}x{w} grid")
    return h, w


def image_header(tokenizer: Tokenizer, h: int, w: int, vocab: Vocab = EMU3) -> list[int]:
    """`<|image start|>{h}*{w}<|image token|>`: what precedes an image's visual tokens."""
    return [vocab.boi] + tokenizer.encode(f"{h}*{w}") + [vocab.img]


def image_tokens(tokenizer: Tokenizer, codes: torch.Tensor, vocab: Vocab = EMU3) -> list[int]:
    """A full image block for an (h, w) code grid: header, rows each ending in eol, eof, eoi."""
    if codes.ndim != 2:
        raise ValueError(f"expected an (h, w) grid of codes, got shape {tuple(codes.shape)}")
    h, w = codes.shape
    rows = torch.cat([vocab.code_to_id(codes.long().cpu()), torch.full((h, 1), vocab.eol)], dim=1)
    return image_header(tokenizer, h, w, vocab) + rows.flatten().tolist() + [vocab.eof, vocab.eoi]


def generation_prompt(tokenizer: Tokenizer, prompt: str, grid: tuple[int, int], *, positive_prompt: str = "",
                      vocab: Vocab = EMU3) -> list[int]:
    """`bos {prompt}{positive_prompt} boi h*w img`: the context from which image tokens follow."""
    return render(tokenizer, [[vocab.bos], prompt + positive_prompt, image_header(tokenizer, *grid, vocab)])


@dataclass
class Turn:
    """One chat turn: the user's images (code grids) and text, and the answer ids once known."""

    text: str
    images: list[torch.Tensor] = field(default_factory=list)
    answer: list[int] | None = None


def chat_prompt(tokenizer: Tokenizer, turns: Sequence[Turn], *, system: str = SYSTEM_PROMPT,
                vocab: Vocab = EMU3) -> list[int]:
    """The understanding layout for one or more turns; the last turn is the one to answer.

    One turn gives exactly the official `bos {system} USER: {images}{text}. ASSISTANT:`. Earlier
    turns repeat `USER: ... ASSISTANT:{answer}` with their answer ids and an eos after each.
    """
    if not turns:
        raise ValueError("a chat needs at least one turn")
    pieces: list[Piece] = [[vocab.bos], system + " "]
    for i, turn in enumerate(turns):
        pieces.append(" USER: " if i else "USER: ")
        pieces += [image_tokens(tokenizer, g, vocab) for g in turn.images]
        pieces.append(f"{turn.text}. ASSISTANT:")
        if i < len(turns) - 1:
            if turn.answer is None:
                raise ValueError(f"turn {i} of {len(turns)} has no answer; only the last turn may be open")
            pieces.append([t for t in turn.answer if t != vocab.eos] + [vocab.eos])
    return render(tokenizer, pieces)


def caption_prompt(tokenizer: Tokenizer, images: Sequence[torch.Tensor], text: str = "",
                   vocab: Vocab = EMU3) -> list[int]:
    """The Stage1 captioning layout `bos {images}{text}` (no system prompt, no template)."""
    return render(tokenizer, [[vocab.bos]] + [image_tokens(tokenizer, g, vocab) for g in images] + [text])


def parse_output(ids: Sequence[int], tokenizer: Tokenizer, vocab: Vocab = EMU3) -> list[str | torch.Tensor]:
    """Split ids into text strings and image code grids ((h, w), or (t, h, w) for several frames).

    Inside `boi ... eoi` the visual tokens of each eol-terminated row form a row; eof ends a
    frame. A block cut short keeps its complete rows; a block with no complete row is dropped.
    """
    out: list[str | torch.Tensor] = []
    text: list[int] = []
    i, n = 0, len(ids)
    while i < n:
        if ids[i] != vocab.boi:
            if ids[i] not in (vocab.eos, vocab.bos, vocab.pad):
                text.append(ids[i])
            i += 1
            continue
        end = i + 1
        while end < n and ids[end] != vocab.eoi:
            end += 1
        if text:
            out.append(tokenizer.decode(text))
            text = []
        grid = parse_image(ids[i + 1:end], vocab)
        if grid is not None:
            out.append(grid)
        i = end + 1
    if text:
        out.append(tokenizer.decode(text))
    return out


def parse_image(block: Sequence[int], vocab: Vocab = EMU3) -> torch.Tensor | None:
    """The code grid of one image's ids (from after boi, or just the generated visual part)."""
    start = block.index(vocab.img) + 1 if vocab.img in block else 0
    frames: list[list[list[int]]] = [[]]
    row: list[int] = []
    for t in block[start:]:
        if vocab.visual_base <= t < vocab.visual_end:
            row.append(t - vocab.visual_base)
        elif t == vocab.eol and row:
            frames[-1].append(row)
            row = []
        elif t == vocab.eof and frames[-1]:
            frames.append([])
    frames = [f for f in frames if f]
    if not frames:
        return None
    width = len(frames[0][0])
    frames = [[r for r in f if len(r) == width] for f in frames]
    height = min(len(f) for f in frames)
    grid = torch.tensor([f[:height] for f in frames], dtype=torch.long)  # (t, h, w)
    return grid[0] if grid.shape[0] == 1 else grid

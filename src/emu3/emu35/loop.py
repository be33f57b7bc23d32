"""Emu3.5's interleaved decode loop: text and images in one stream (emu35_spec section 6).

Ids in, ids out. Each conditional row is a small state machine on the host, driven by the tokens
it emits:

* text mode: any non-visual id (visual ids are masked), text sampling, no guidance. `boi`
  switches to image mode; `eos` ends the row.
* size header (after `boi`): the digits of a known grid `h*w` and then `img` are forced; with no
  known grid the model writes `DD*DD` (first digits 1-9, image sampling) and `img` follows. The
  first image's size is then forced on every later image of the row.
* visual mode (after `img`): `eol` is forced after each row but the last and `eoi` after the
  last, h * (w + 1) ids in all; the codes in between are guided and sampled with image sampling.
  After `eoi` the row is back in text mode (or done once it has `max_images` images).

Guidance follows the official HF backend: the unconditional row starts from its own prompt and is
fed only the generated image spans, `boi` to `eoi` inclusive, never the generated text; scores are
`u + scale * (c - u)` on log-probabilities (`generation.guide`), on visual codes only. Both rows
run in one batched forward on a static `GappedCache` (the unconditional row leaves the text
slots empty). Codes are scored on the visual slice of the output head only, text and free size
headers on the whole head, forced ids on none of it; the host waits on the device only when a row
in text mode or in a free size header needs its token's value.

This module knows nothing of text or pixels: the pipeline supplies prompts and size-header ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from emu3.emu35.cache import GappedCache
from emu3.emu35.prompts import SizeHeader
from emu3.generation.constraints import guide
from emu3.generation.loop import Progress, left_pad
from emu3.generation.memory import check_fits, plan_generation
from emu3.generation.sampling import SamplingConfig, sample
from emu3.model import Transformer
from emu3.vocab import Vocab

TEXT, HEADER, VISUAL, DONE = range(4)
# Rows of the allowed-id table, and the mark of a free code (scored on the visual slice, no table row).
_M_TEXT, _M_TEXT_NO_IMAGE, _M_LEAD_DIGIT, _M_DIGIT, _M_STAR = range(5)
_CODE = -1
_AUTO_HEADER_MASKS = (_M_LEAD_DIGIT, _M_DIGIT, _M_STAR, _M_LEAD_DIGIT, _M_DIGIT)  # "DD*DD", then img


@dataclass
class _Row:
    """Host-side state of one conditional row."""

    header: list[int] | None  # forced size-header ids; None until the first free header is written
    size: tuple[int, int] | None
    phase: int = TEXT
    k: int = 0  # ids emitted in the current phase
    images: int = 0
    length: int = 0  # ids emitted in all
    written: list[int] = field(default_factory=list)  # a free size header, as it is sampled


def _allowed_table(vocab_size: int, vocab: Vocab, header: SizeHeader, device) -> torch.Tensor:
    ids = torch.arange(vocab_size, device=device)
    visual = (ids >= vocab.visual_base) & (ids < vocab.visual_end)
    digits = torch.tensor(header.digits, device=device)
    table = torch.zeros(5, vocab_size, dtype=torch.bool, device=device)
    table[_M_TEXT] = ~visual
    table[_M_TEXT_NO_IMAGE] = ~visual & (ids != vocab.boi)
    table[_M_LEAD_DIGIT, digits[1:]] = True
    table[_M_DIGIT, digits] = True
    table[_M_STAR, header.star] = True
    return table


@torch.no_grad()  # not inference_mode: quantized weight subclasses cannot be sliced under it
def generate_interleaved(
    model: Transformer,
    prompts: list[list[int]],
    uncond_prompts: list[list[int]] | None,
    *,
    vocab: Vocab,
    header: SizeHeader,
    max_new_tokens: int,
    text_sampling: SamplingConfig,
    image_sampling: SamplingConfig,
    cfg_scale: float = 1.0,
    sizes: Sequence[tuple[int, int] | None] | None = None,
    max_images: int | None = None,
    reserve_image: bool = False,
    seeds: list[int] | None = None,
    progress: Progress | None = None,
) -> list[list[int]]:
    """Generate after each prompt until eos, `max_images` images, or `max_new_tokens` ids.

    `sizes[i]` forces the grid of every image of row i (None: the first image chooses). With
    `max_images=0` no image may start. `reserve_image` (rows with a known size only) forces `boi`
    when the budget left is exactly what the first image needs, so a single-image task always
    ends with its image. `uncond_prompts` (one per prompt) and `cfg_scale` != 1 turn guidance on.
    Returns each row's ids, ending at eos or at the last image's eoi when either ended it.
    """
    batch = len(prompts)
    if batch == 0:
        raise ValueError("no prompts to generate from")
    guided = uncond_prompts is not None and cfg_scale != 1.0
    if guided and len(uncond_prompts) != batch:
        raise ValueError(f"{len(uncond_prompts)} unconditional prompts for {batch} prompts")
    sizes = list(sizes) if sizes is not None else [None] * batch
    if len(sizes) != batch:
        raise ValueError(f"{len(sizes)} image sizes for {batch} prompts")
    if seeds is not None and len(seeds) != batch:
        raise ValueError(f"{len(seeds)} seeds for {batch} prompts")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if max_images is not None and max_images < 0:
        raise ValueError(f"max_images must be >= 0, got {max_images}")
    device = model.lm_head.weight.device
    ids, offsets = left_pad(prompts + (list(uncond_prompts) if guided else []), vocab.pad, device)
    prompt_len = ids.shape[1]
    context = model.config.max_position_embeddings
    if prompt_len >= context:
        raise ValueError(f"the prompt of {prompt_len} tokens fills the model's context of {context}")
    budget = min(max_new_tokens, context - prompt_len)
    rows = [_Row(header.ids(*s) if s else None, tuple(s) if s else None) for s in sizes]
    need = [2 + len(r.header) + r.size[0] * (r.size[1] + 1) if reserve_image and r.size else 0 for r in rows]
    if max(need) > budget:
        remedy = ("raise max_new_tokens" if budget == max_new_tokens else
                  f"the model's context of {context} leaves only that after the prompt of {prompt_len} tokens")
        raise ValueError(f"a budget of {budget} new tokens cannot hold a {rows[need.index(max(need))].size} "
                         f"image, which needs {max(need)} ({remedy}; or shrink the image)")
    check_fits(plan_generation(model.config, dtype=model.lm_head.weight.dtype, batch=batch, prompt_len=prompt_len,
                               new_tokens=budget, guidance=guided, codebook_size=vocab.codebook_size,
                               materialized_attention=device.type == "cpu"), device)
    generators = None if seeds is None else [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    allowed = _allowed_table(model.config.vocab_size, vocab, header, device)
    visual_head = model.lm_head.weight[vocab.visual_base:vocab.visual_end]  # (codebook, C): a view

    cache = GappedCache.for_model(model, ids.shape[0], prompt_len + budget)
    slots = torch.arange(prompt_len, device=device)
    cache.admit(slots, slots[None, :] >= offsets[:, None])
    hidden = model.hidden(ids, slots, cache)[:, -1]  # (R, C)
    out = torch.full((batch, budget), vocab.pad, dtype=torch.long, device=device)
    for step in range(budget):
        forced, masks, text_rows, image_rows = [], [], [], []
        for i, r in enumerate(rows):
            token, mask = _plan(r, vocab, budget - step, need[i], max_images)
            forced.append(token)
            masks.append(mask)
            if mask is not None:
                (text_rows if r.phase == TEXT else image_rows).append(i)
        token = torch.tensor(forced, device=device)  # (B,): -1 where the row samples
        if text_rows or image_rows:
            sampled = _sample(model, hidden, visual_head, rows, masks, text_rows, image_rows, allowed, guided,
                              cfg_scale, text_sampling, image_sampling, generators, vocab)
            token = torch.where(token >= 0, token, sampled)
        out[:, step] = token
        needs_value = any(r.phase == TEXT or (r.phase == HEADER and r.header is None) for r in rows)
        values = token.tolist() if needs_value else forced
        in_span = [r.phase in (HEADER, VISUAL) or (r.phase == TEXT and v == vocab.boi) for r, v in zip(rows, values)]
        live = [r.phase != DONE for r in rows]
        for r, v in zip(rows, values):
            _advance(r, v, vocab, header, max_images)
        if progress is not None:
            progress(step + 1, budget)
        if all(r.phase == DONE for r in rows) or step + 1 == budget:
            break
        feed = torch.cat([token, token]) if guided else token
        slot = torch.tensor([prompt_len + step], device=device)
        keep = live + ([a and b for a, b in zip(live, in_span)] if guided else [])
        cache.admit(slot, torch.tensor(keep, device=device)[:, None])
        hidden = model.hidden(feed[:, None], slot, cache)[:, -1]
    return [row[: r.length] for row, r in zip(out.tolist(), rows)]


def _plan(r: _Row, vocab: Vocab, left: int, need: int, max_images: int | None) -> tuple[int, int | None]:
    """(forced id or -1, allowed-table row or `_CODE` or None when forced) for row `r`'s next id."""
    if r.phase == DONE:
        return vocab.pad, None
    if r.phase == TEXT:
        if need and r.images == 0 and left == need:
            return vocab.boi, None
        return -1, _M_TEXT_NO_IMAGE if max_images == 0 else _M_TEXT
    if r.phase == HEADER:
        if r.header is not None:
            return (r.header[r.k] if r.k < len(r.header) else vocab.img), None
        return (-1, _AUTO_HEADER_MASKS[r.k]) if r.k < len(_AUTO_HEADER_MASKS) else (vocab.img, None)
    h, w = r.size
    pos = r.k + 1  # 1-based position after img
    if pos == h * (w + 1):
        return vocab.eoi, None
    if pos % (w + 1) == 0:
        return vocab.eol, None
    return -1, _CODE


def _advance(r: _Row, value: int, vocab: Vocab, header: SizeHeader, max_images: int | None) -> None:
    """Update row `r` after it emitted `value` (only read where the id was not forced or visual)."""
    if r.phase == DONE:
        return
    r.length += 1
    r.k += 1
    if r.phase == TEXT:
        if value == vocab.eos:
            r.phase = DONE
        elif value == vocab.boi:
            r.phase, r.k = HEADER, 0
    elif r.phase == HEADER:
        if r.header is None:
            r.written.append(value)
            if value != vocab.img:
                return
            digit = {t: str(d) for d, t in enumerate(header.digits)}
            h, w = (int(digit[a] + digit[b]) for a, b in (r.written[0:2], r.written[3:5]))
            r.header, r.size = r.written[:5], (h, w)  # later images repeat the first one's size
            r.phase, r.k = VISUAL, 0
        elif r.k == len(r.header) + 1:
            r.phase, r.k = VISUAL, 0
    elif r.k == r.size[0] * (r.size[1] + 1):  # eoi
        r.images += 1
        r.phase = DONE if max_images is not None and r.images >= max_images else TEXT
        r.k = 0


def _sample(model, hidden, visual_head, rows, masks, text_rows, image_rows, allowed, guided, cfg_scale,
            text_sampling, image_sampling, generators, vocab) -> torch.Tensor:
    """One sampled id per conditional row (B,); only `text_rows` and `image_rows` are meaningful.

    Codes are scored on the visual slice of the output head only (softmax, top-k/p and argmax ignore
    the per-row constant that leaving out the other logits shifts log-probabilities by), so a row
    draws the same random numbers for a code whatever the other rows of its batch are doing.
    """
    batch = len(rows)
    token = torch.zeros(batch, dtype=torch.long, device=hidden.device)

    def draw(group: list[int], scores: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
        return sample(scores, cfg, None if generators is None else [generators[i] for i in group])

    visual = [i for i in image_rows if rows[i].phase == VISUAL]
    if visual:
        logits = F.linear(hidden[visual + ([batch + i for i in visual] if guided else [])], visual_head).float()
        n = len(visual)
        scores = guide(logits[:n], logits[n:], cfg_scale, image_sampling.plausibility) if guided else logits
        token[visual] = draw(visual, scores, image_sampling) + vocab.visual_base
    header = [i for i in image_rows if rows[i].phase == HEADER]
    for group, cfg in ((text_rows, text_sampling), (header, image_sampling)):
        if group:
            scores = model.logits(hidden[group])  # (n, V)
            scores = scores.masked_fill(~allowed[[masks[i] for i in group]], float("-inf"))
            token[group] = draw(group, scores, cfg)
    return token


__all__ = ["generate_interleaved"]

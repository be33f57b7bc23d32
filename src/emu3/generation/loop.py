"""The plain prefill/decode loop: batched prompts, guidance in the same forward, a static cache.

Ids in, ids out. Conditional and unconditional (guidance) rows run as one batch of 2B rows, left
padded to a common length; the cache masks the padding and restarts each row's positions at zero,
so every row computes what it would compute alone. The loop knows nothing of text or pixels.
"""

from __future__ import annotations

from typing import Callable

import torch

from emu3.generation.constraints import ImageGrid, check_guidance_scale, guide
from emu3.generation.sampling import SamplingConfig, sample
from emu3.model import KVCache, Transformer

Progress = Callable[[int, int], None]


def left_pad(rows: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows left-padded to one length as (R, L) ids, and each row's padding length (R,)."""
    if any(len(r) == 0 for r in rows):
        raise ValueError("every prompt must hold at least one token")
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, length - len(r):] = torch.tensor(r, dtype=torch.long)
    offsets = torch.tensor([length - len(r) for r in rows], dtype=torch.long)
    return ids.to(device), offsets.to(device)


def seeded_generators(seeds: list[int] | None, batch: int, sampling: SamplingConfig,
                      device) -> list[torch.Generator] | None:
    """One generator per row from `seeds` (None when decoding is greedy or unseeded)."""
    if seeds is not None and len(seeds) != batch:
        raise ValueError(f"{len(seeds)} seeds for {batch} prompts")
    if seeds is None or sampling.is_greedy:
        return None
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


@torch.inference_mode()
def generate(
    model: Transformer,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    sampling: SamplingConfig = SamplingConfig(),
    eos_id: int,
    pad_id: int,
    negative_prompts: list[list[int]] | None = None,
    cfg_scale: float = 1.0,
    grid: ImageGrid | None = None,
    seeds: list[int] | None = None,
    progress: Progress | None = None,
) -> list[list[int]]:
    """Generate up to `max_new_tokens` ids after each prompt; each list ends at (and keeps) eos.

    With `negative_prompts` and `cfg_scale` != 1 (> 0), scores are guided as in `constraints.guide`,
    the unconditional rows being fed the tokens chosen for their conditional rows. `grid`
    constrains every step to the image layout; `seeds` (one per prompt) make sampling reproducible.
    """
    batch = len(prompts)
    if batch == 0:
        raise ValueError("no prompts to generate from")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    guided = negative_prompts is not None and cfg_scale != 1.0
    if guided and len(negative_prompts) != batch:
        raise ValueError(f"{len(negative_prompts)} negative prompts for {batch} prompts")
    if guided:
        check_guidance_scale(cfg_scale, "cfg_scale")
    device = model.lm_head.weight.device
    ids, offsets = left_pad(prompts + (negative_prompts if guided else []), pad_id, device)
    prompt_len = ids.shape[1]
    cache = KVCache.for_model(model, ids.shape[0], prompt_len + max_new_tokens - 1)  # the last token is not fed
    cache.pad_offsets = offsets
    generators = seeded_generators(seeds, batch, sampling, device)

    logits = model.logits(model.hidden(ids, torch.arange(prompt_len, device=device), cache)[:, -1])
    out = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    steps = 0
    for step in range(max_new_tokens):
        # The grid masks the conditional scores before guidance, which keeps their -inf (the scale is > 0),
        # so that a plausibility floor is relative to the most likely allowed token.
        scores = logits[:batch]
        if grid is not None:
            scores = grid.apply(scores, torch.full((batch,), step + 1, device=device))
        if guided:
            scores = guide(scores, logits[batch:], cfg_scale, sampling.plausibility)
        token = torch.where(done, pad_id, sample(scores, sampling, generators))
        out[:, step] = token
        done |= token == eos_id
        steps = step + 1
        if progress is not None:
            progress(steps, max_new_tokens)
        if steps == max_new_tokens or bool(done.all()):
            break
        feed = torch.cat([token, token]) if guided else token
        pos = torch.tensor([prompt_len + step], device=device)
        logits = model.logits(model.hidden(feed[:, None], pos, cache)[:, -1])
    return [_until_eos(row, eos_id) for row in out[:, :steps].tolist()]


def _until_eos(row: list[int], eos_id: int) -> list[int]:
    return row[: row.index(eos_id) + 1] if eos_id in row else row

"""The fast decode loop for image tokens: only the logits that can be sampled are ever computed.

Inside an image row only the visual-token rows of the output head can be chosen, and every other
position (row ends, eof, eoi, eos, padding) is forced by the grid. So this loop multiplies the last
hidden state by the visual slice of `lm_head` only (32768 of 184622 rows for Emu3), and skips the
head entirely at forced positions. Guidance and sampling on the slice give the same distribution as
on the full masked vocabulary: log-softmax over a subset differs from the full one by a per-row
constant, which softmax, top-k, top-p and argmax ignore. Grids are known on the host, so the loop
never waits on the device to decide what to do; the decode step can be compiled.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from emu3.generation.constraints import ImageGrid, guide
from emu3.generation.loop import Progress, left_pad, seeded_generators
from emu3.generation.sampling import SamplingConfig, sample
from emu3.model import KVCache, Transformer
from emu3.vocab import Vocab

StepFn = Callable[[torch.Tensor, torch.Tensor, KVCache], torch.Tensor]


def compiled_step(model: Transformer) -> StepFn:
    """`model.hidden` compiled for the fixed decode shapes (CUDA graphs on GPU)."""
    mode = "reduce-overhead" if model.lm_head.weight.is_cuda else None
    return torch.compile(model.hidden, mode=mode, dynamic=False, fullgraph=False)


@torch.inference_mode()
def generate_images(
    model: Transformer,
    prompts: list[list[int]],
    grids: list[tuple[int, int]],
    *,
    vocab: Vocab,
    sampling: SamplingConfig = SamplingConfig(),
    negative_prompts: list[list[int]] | None = None,
    cfg_scale: float = 1.0,
    seeds: list[int] | None = None,
    progress: Progress | None = None,
    step_fn: StepFn | None = None,
) -> list[list[int]]:
    """Image tokens `[v * w, eol] * h, eof, eoi, eos` after each prompt, one (h, w) grid per prompt.

    Prompts must end with `<|image token|>` (see `prompting.generation_prompt`); rows of a batch
    may have different grids. Returns each row's ids up to and including eos.
    """
    batch = len(prompts)
    if batch == 0 or len(grids) != batch:
        raise ValueError(f"need one grid per prompt, got {len(grids)} grids for {batch} prompts")
    guided = negative_prompts is not None and cfg_scale != 1.0
    if guided and len(negative_prompts) != batch:
        raise ValueError(f"{len(negative_prompts)} negative prompts for {batch} prompts")
    device = model.lm_head.weight.device
    ids, offsets = left_pad(prompts + (negative_prompts if guided else []), vocab.pad, device)
    prompt_len = ids.shape[1]
    host_grid = ImageGrid(torch.tensor([g[0] for g in grids]), torch.tensor([g[1] for g in grids]), vocab)
    lengths = host_grid.num_tokens().tolist()
    total = max(lengths)
    cache = KVCache.for_model(model, ids.shape[0], prompt_len + total)
    cache.pad_offsets = offsets
    generators = seeded_generators(seeds, batch, sampling, device)
    visual_head = model.lm_head.weight[vocab.visual_base:vocab.visual_end]  # (codebook, C): a view
    step = step_fn or model.hidden

    hidden = model.hidden(ids, torch.arange(prompt_len, device=device), cache)[:, -1]  # (R, C)
    out = torch.empty(batch, total, dtype=torch.long, device=device)
    for i in range(total):
        forced = host_grid.forced(torch.full((batch,), i + 1))  # (B,) on the host: -1 where free
        forced_dev = forced.to(device, non_blocking=True)
        if bool((forced >= 0).all()):
            token = forced_dev
        else:
            scores = F.linear(hidden, visual_head).float()  # (R, codebook)
            scores = guide(scores[:batch], scores[batch:], cfg_scale) if guided else scores
            token = sample(scores, sampling, generators) + vocab.visual_base
            token = torch.where(forced_dev >= 0, forced_dev, token)
        out[:, i] = token
        if progress is not None:
            progress(i + 1, total)
        if i + 1 < total:
            feed = torch.cat([token, token]) if guided else token
            pos = torch.full((1,), prompt_len + i, dtype=torch.long, device=device)
            hidden = step(feed[:, None], pos, cache)[:, -1]
    rows = out.tolist()
    return [row[:n] for row, n in zip(rows, lengths)]

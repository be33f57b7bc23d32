"""The fast decode loop for image tokens: only the logits that can be sampled are ever computed.

Inside an image row only the visual-token rows of the output head can be chosen, and every other
position (row ends, eof, eoi, eos, padding) is forced by the grid. So this loop multiplies the last
hidden state by the visual slice of `lm_head` only (32768 of 184622 rows for Emu3), and skips the
head entirely at forced positions. Guidance and sampling on the slice give the same distribution as
on the full masked vocabulary: log-softmax over a subset differs from the full one by a per-row
constant, which softmax, top-k, top-p and argmax ignore. Grids are known on the host, so the loop
never waits on the device to decide what to do; the decode step can be compiled. With
`draft_len > 0` the speculative Jacobi loop (`speculative.py`) runs instead, on the same setup.
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass
class ImageBatch:
    """What both image loops share: padded prompts in a cache, the grids, generators, the visual head."""

    model: Transformer
    vocab: Vocab
    sampling: SamplingConfig
    batch: int
    guided: bool
    cfg_scale: float
    ids: torch.Tensor  # (R, L) left-padded prompts; R = 2B with guidance
    cache: KVCache
    grid: ImageGrid  # on the host
    lengths: list[int]  # tokens to generate per row
    generators: list[torch.Generator] | None
    visual_head: torch.Tensor  # (codebook, C), a view of lm_head.weight

    @classmethod
    def prepare(cls, model: Transformer, prompts: list[list[int]], grids: list[tuple[int, int]], *, vocab: Vocab,
                sampling: SamplingConfig, negative_prompts: list[list[int]] | None, cfg_scale: float,
                seeds: list[int] | None) -> "ImageBatch":
        batch = len(prompts)
        if batch == 0 or len(grids) != batch:
            raise ValueError(f"need one grid per prompt, got {len(grids)} grids for {batch} prompts")
        for h, w in grids:
            if h < 1 or w < 1:
                raise ValueError(f"an image grid needs at least one row and one column of tokens, got {h}x{w}")
        guided = negative_prompts is not None and cfg_scale != 1.0
        if guided and len(negative_prompts) != batch:
            raise ValueError(f"{len(negative_prompts)} negative prompts for {batch} prompts")
        device = model.lm_head.weight.device
        ids, offsets = left_pad(prompts + (negative_prompts if guided else []), vocab.pad, device)
        grid = ImageGrid(torch.tensor([g[0] for g in grids]), torch.tensor([g[1] for g in grids]), vocab)
        lengths = grid.num_tokens().tolist()
        # The last token (eos) is never fed, and a speculative window never reaches past it either.
        cache = KVCache.for_model(model, ids.shape[0], ids.shape[1] + max(lengths) - 1)
        cache.pad_offsets = offsets
        visual_head = model.lm_head.weight[vocab.visual_base:vocab.visual_end]
        return cls(model, vocab, sampling, batch, guided, cfg_scale, ids, cache, grid, lengths,
                   seeded_generators(seeds, batch, sampling, device), visual_head)

    @property
    def device(self) -> torch.device:
        return self.ids.device

    @property
    def prompt_len(self) -> int:
        return self.ids.shape[1]

    @property
    def total(self) -> int:
        return max(self.lengths)

    def forced(self, first_offset: int, count: int = 1) -> torch.Tensor:
        """Forced ids (B, count) for offsets first_offset.. on the host; -1 where a visual token is free."""
        offsets = torch.arange(first_offset, first_offset + count)
        return torch.stack([self.grid.forced(torch.full((self.batch,), o)) for o in offsets.tolist()], 1)

    def visual_scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """Guided scores over the visual codes (B, ..., codebook) from hidden states (R, ..., C)."""
        scores = F.linear(hidden, self.visual_head).float()
        if not self.guided:
            return scores
        return guide(scores[: self.batch], scores[self.batch:], self.cfg_scale, self.sampling.plausibility)

    def feed(self, tokens: torch.Tensor) -> torch.Tensor:
        """The model rows' input for the batch's chosen tokens: the uncond rows follow the cond rows."""
        return torch.cat([tokens, tokens]) if self.guided else tokens

    def trim(self, out: torch.Tensor) -> list[list[int]]:
        return [row[:n] for row, n in zip(out.tolist(), self.lengths)]


@torch.no_grad()  # not inference_mode: quantized weight subclasses cannot be sliced under it
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
    draft_len: int = 0,
    stats: dict | None = None,
) -> list[list[int]]:
    """Image tokens `[v * w, eol] * h, eof, eoi, eos` after each prompt, one (h, w) grid per prompt.

    Prompts must end with `<|image token|>` (see `prompting.generation_prompt`); rows of a batch
    may have different grids. Returns each row's ids up to and including eos. `draft_len` > 0
    decodes with speculative Jacobi decoding, `draft_len` tokens per forward (when sampling, a seed then
    reproduces an image only within the same batch; see `speculative`); `stats`, if given,
    receives the number of forwards and of generated tokens.
    """
    if draft_len < 0:
        raise ValueError(f"draft_len must be >= 0, got {draft_len}")
    b = ImageBatch.prepare(model, prompts, grids, vocab=vocab, sampling=sampling, negative_prompts=negative_prompts,
                           cfg_scale=cfg_scale, seeds=seeds)
    if draft_len > 0:
        from emu3.generation.speculative import speculative_jacobi

        return speculative_jacobi(b, draft_len, progress=progress, step_fn=step_fn, stats=stats)
    step = step_fn or model.hidden
    hidden = model.hidden(b.ids, torch.arange(b.prompt_len, device=b.device), b.cache)[:, -1]  # (R, C)
    out = torch.empty(b.batch, b.total, dtype=torch.long, device=b.device)
    for i in range(b.total):
        forced = b.forced(i + 1)[:, 0]  # (B,) on the host
        forced_dev = forced.to(b.device, non_blocking=True)
        free = (forced < 0).nonzero().flatten().tolist()
        if not free:
            token = forced_dev
        else:  # only the free rows draw, so a row's seed gives its image whatever the other rows' grids
            gens = None if b.generators is None else [b.generators[r] for r in free]
            drawn = sample(b.visual_scores(hidden)[free], sampling, gens) + vocab.visual_base
            token = forced_dev.clone()
            token[free] = drawn
        out[:, i] = token
        if progress is not None:
            progress(i + 1, b.total)
        if i + 1 < b.total:
            pos = torch.full((1,), b.prompt_len + i, dtype=torch.long, device=b.device)
            hidden = step(b.feed(token)[:, None], pos, b.cache)[:, -1]
    if stats is not None:
        stats.update(forwards=b.total, tokens=b.total)
    return b.trim(out)

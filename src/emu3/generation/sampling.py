"""Turning a row of scores into a token: greedy, temperature, top-k and top-p sampling.

Sampling draws one exponential variate per vocabulary entry from each row's own generator and takes
`argmax(p / q)` (equivalent to a multinomial draw). A row's result depends only on its scores and its
generator, never on the other rows of the batch, so a seed reproduces an image whatever the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingConfig:
    """How to choose each token. `greedy` (or temperature 0) takes the argmax.

    `plausibility` acts with classifier-free guidance only (`constraints.guide`): a token whose
    conditional probability is below `plausibility` times that of the conditional's most likely token
    is never chosen, however much guidance raises it. 0 (the official behaviour) keeps every token.
    """

    greedy: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    plausibility: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.plausibility < 1.0:
            raise ValueError(f"plausibility must be in [0, 1), got {self.plausibility}")

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0


def warp(scores: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Temperature, then top-k, then top-p (the transformers order) on (B, V) scores.

    Temperature 0 (greedy) leaves the scores unscaled: dividing by it would turn them into
    infinities and NaNs, and the argmax of the warped scores is the argmax of the scores anyway. Other
    temperatures divide the scores less their row's maximum, and the maximum stays 0, so a tiny one
    (1e-300, which is 0 in fp32) gives 0 for the best score and -inf for the rest, never a NaN; softmax
    does not see the shift."""
    if cfg.temperature not in (0.0, 1.0):
        shifted = scores - scores.max(-1, keepdim=True).values
        scores = torch.where(shifted == 0, shifted, shifted / cfg.temperature)
    if cfg.top_k is not None and cfg.top_k < scores.shape[-1]:
        kth = torch.topk(scores, cfg.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if cfg.top_p is not None and cfg.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=False)
        cum = sorted_scores.softmax(-1).cumsum(-1)
        drop_sorted = cum <= 1 - cfg.top_p
        drop_sorted[..., -1] = False  # always keep the most likely token
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


def sample(scores: torch.Tensor, cfg: SamplingConfig, generators: list[torch.Generator] | None) -> torch.Tensor:
    """One token id per row of `scores` (B, V); `generators` holds one generator per row."""
    if cfg.is_greedy:
        return scores.argmax(-1)
    return draw(warp(scores.float(), cfg).softmax(-1), generators)


def draw(probs: torch.Tensor, generators: list[torch.Generator] | None) -> torch.Tensor:
    """An index drawn from each distribution of `probs` (B, ..., K); row b uses `generators[b]`.

    The exponential race `argmax(p / q)` with q ~ Exp(1) is a multinomial draw.
    """
    noise = torch.empty_like(probs)
    for row, gen in enumerate(generators or [None] * probs.shape[0]):
        noise[row].exponential_(generator=gen)
    return (probs / noise).argmax(-1)

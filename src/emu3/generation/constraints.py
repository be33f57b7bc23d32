"""Small composable score transforms: classifier-free guidance and the image-grid constraint.

Both work on whole batches of score rows on the device, with no Python per-token callbacks and no
lists of allowed ids. The grid constraint is a pure function of each row's position inside its
image, so it also serves teacher-forced checks, parallel decoding and the server.
"""

from __future__ import annotations

import math

import torch

from emu3.vocab import Vocab

NEG_INF = float("-inf")


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float, plausibility: float = 0.0) -> torch.Tensor:
    """Classifier-free guidance on log-probabilities: uncond + scale * (cond - uncond).

    With `plausibility` > 0, tokens whose conditional probability is below `plausibility` times the
    conditional's largest get -inf (the adaptive plausibility constraint of contrastive decoding, Li et
    al. 2023). Guidance rewards what the prompt makes likelier, and in the far tail that is noise: a code
    at 1e-7 given the prompt and 1e-13 without it scores above the code at 0.99 and 0.1 at scale 3. A
    small model spreads its unconditional mass thinly, so unconstrained it draws such codes often.
    """
    cond, uncond = cond.log_softmax(-1), uncond.log_softmax(-1)
    guided = uncond + scale * (cond - uncond)
    if plausibility > 0:
        floor = cond.max(-1, keepdim=True).values + math.log(plausibility)
        guided = guided.masked_fill(cond < floor, NEG_INF)
    return guided


def check_guidance_scale(scale: float, what: str = "cfg") -> float:
    """`scale` when it is a usable guidance scale: finite and > 0 (NaN or infinity would turn every
    guided score into NaN, and the argmax of NaNs is token 0)."""
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{what} must be a finite number > 0, got {scale}")
    return scale


def image_token_count(h, w):
    """Tokens generated for an h x w image after `<|image token|>`, eos included: `[v * w, eol] * h, eof,
    eoi, eos`. Works on ints and on (B,) tensors alike."""
    return h * (w + 1) + 3


class ImageGrid:
    """Forces the layout `[v * w, eol] * h, eof, eoi, eos` of an h x w image, then padding.

    `offset` counts the tokens of the image generated so far plus one: offset 1 is the first
    visual token after `<|image token|>`. Offsets <= 0 mean "not inside an image" (left unchanged).
    `heights` / `widths` are (B,) tensors, so every row of a batch may have its own grid.
    """

    def __init__(self, heights: torch.Tensor, widths: torch.Tensor, vocab: Vocab) -> None:
        self.h, self.w, self.vocab = heights, widths, vocab

    def num_tokens(self) -> torch.Tensor:
        """Tokens generated per image, eos included (`image_token_count`), as (B,)."""
        return image_token_count(self.h, self.w)

    def forced(self, offset: torch.Tensor) -> torch.Tensor:
        """The forced token id per row, or -1 where a visual token is free to choose, as (B,)."""
        v = self.vocab
        end = (self.w + 1) * self.h
        forced = torch.full_like(offset, -1)
        forced = torch.where(offset % (self.w + 1) == 0, v.eol, forced)
        forced = torch.where(offset == end + 1, v.eof, forced)
        forced = torch.where(offset == end + 2, v.eoi, forced)
        forced = torch.where(offset == end + 3, v.eos, forced)
        forced = torch.where(offset > end + 3, v.pad, forced)
        return torch.where(offset <= 0, -2, forced)

    def apply(self, scores: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """Mask (B, V) scores: visual tokens only inside a row; the single forced id elsewhere."""
        forced = self.forced(offset)  # (B,)
        ids = torch.arange(scores.shape[-1], device=scores.device)
        visual = (ids >= self.vocab.visual_base) & (ids < self.vocab.visual_end)  # (V,)
        allowed = torch.where((forced == -1)[:, None], visual[None], ids[None] == forced[:, None])
        allowed = allowed | (forced == -2)[:, None]
        return scores.masked_fill(~allowed, NEG_INF)

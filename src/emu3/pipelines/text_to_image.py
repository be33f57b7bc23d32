"""Text-to-image: prompt(s) -> guided, grid-constrained generation -> decoded images.

Official Emu3-Gen defaults: classifier-free guidance 3.0 against the official negative prompt
(built with the same template, ratio and area), the positive suffix, top-k 2048 sampling, ratio 1:1
and the model's `image_area`. Seeds are per image: image i of a batch uses `seed + i`. A
compact-vocabulary model (this project's own) has no prompts around the user's and samples with the
plausibility constraint (`default_prompts`, `default_sampling`).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import torch
from PIL import Image

from emu3.compact_vocab import CompactTokenizer
from emu3.defaults import COMPACT_PLAUSIBILITY, GUIDANCE_SCALE, TOP_K
from emu3.generation import SamplingConfig
from emu3.generation.constraints import check_guidance_scale, image_token_count
from emu3.generation.engine import StepFn, generate_images
from emu3.generation.loop import Progress
from emu3.generation.memory import check_fits, plan_generation
from emu3.pipelines.loading import Emu3
from emu3.prompting import NEGATIVE_PROMPT, POSITIVE_PROMPT, generation_prompt, grid_for_ratio, parse_image


def default_prompts(m: Emu3) -> tuple[str, str]:
    """(positive suffix, negative prompt): the official ones, or none for a compact-vocabulary model
    (such as the bundled Shapes model, trained without them)."""
    return ("", "") if isinstance(m.tokenizer, CompactTokenizer) else (POSITIVE_PROMPT, NEGATIVE_PROMPT)


def default_sampling(m: Emu3) -> SamplingConfig:
    """How pictures and clips are sampled unless told otherwise: top-k 2048, the official setting; a
    compact-vocabulary model also gets the plausibility constraint (`COMPACT_PLAUSIBILITY`): guidance
    drew the bundled model's codes from its thin tail, garbage in corners and wrong backgrounds."""
    compact = isinstance(m.tokenizer, CompactTokenizer)
    return SamplingConfig(top_k=TOP_K, plausibility=COMPACT_PLAUSIBILITY if compact else 0.0)


@dataclass
class ImageResult:
    images: list[Image.Image]
    token_ids: list[list[int]]
    grid: tuple[int, int]
    seeds: list[int]
    seconds: float
    forwards: int  # model forwards for the whole batch (fewer than tokens with speculative decoding)


def text_to_image(
    m: Emu3,
    prompt: str | list[str],
    *,
    ratio: str = "1:1",
    image_area: int | None = None,
    cfg: float = GUIDANCE_SCALE,
    positive_prompt: str | None = None,
    negative_prompt: str | None = None,
    sampling: SamplingConfig | None = None,
    seed: int | None = None,
    num_images: int = 1,
    progress: Progress | None = None,
    step_fn: StepFn | None = None,
    draft_len: int = 0,
) -> ImageResult:
    """Generate `num_images` images per prompt; all share one ratio and grid.

    `positive_prompt`, `negative_prompt` and `sampling` left None are the model's own (`default_prompts`,
    `default_sampling`). `draft_len` > 0 turns on speculative Jacobi decoding with that many draft tokens
    per forward.
    """
    lm, tok = m.require_lm()
    positive, negative = default_prompts(m)
    positive_prompt = positive if positive_prompt is None else positive_prompt
    negative_prompt = negative if negative_prompt is None else negative_prompt
    sampling = sampling or default_sampling(m)
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or num_images < 1:
        raise ValueError("need at least one prompt and num_images >= 1")
    check_guidance_scale(cfg)
    prompts = [p for p in prompts for _ in range(num_images)]
    h, w = grid_for_ratio(ratio, m.image_area if image_area is None else image_area, m.vq.spatial_factor)
    ids = [generation_prompt(tok, p, (h, w), positive_prompt=positive_prompt, vocab=m.vocab) for p in prompts]
    negative = generation_prompt(tok, negative_prompt, (h, w), vocab=m.vocab)
    base = secrets.randbelow(2**31) if seed is None else seed
    seeds = [base + i for i in range(len(prompts))]
    device = lm.lm_head.weight.device
    plan = plan_generation(lm.config, dtype=lm.lm_head.weight.dtype, batch=len(ids), new_tokens=image_token_count(h, w),
                           prompt_len=max(len(p) for p in ids + [negative]), guidance=cfg != 1.0,
                           draft_len=draft_len, codebook_size=m.vocab.codebook_size,
                           materialized_attention=device.type == "cpu")
    check_fits(plan, device)
    start, stats = time.perf_counter(), {}
    out = generate_images(
        lm, ids, [(h, w)] * len(ids), vocab=m.vocab, sampling=sampling, negative_prompts=[negative] * len(ids),
        cfg_scale=cfg, seeds=seeds, progress=progress, step_fn=step_fn, draft_len=draft_len, stats=stats,
    )
    grids = torch.stack([parse_image(o, m.vocab) for o in out])  # (B, h, w)
    images = m.decode_codes(grids)
    return ImageResult(images, out, (h, w), seeds, time.perf_counter() - start, stats["forwards"])

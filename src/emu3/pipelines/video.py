"""Video generation and continuation: a caption (and optional first frames) -> the next frames, one at a time.

The layout is the "images" video mode of training (`emu3.train.examples.text_to_visual`): `bos
{caption}` followed by one ordinary image block per frame (`prompting.image_tokens`: header, rows
with eol, eof, eoi). Frame k is generated exactly as `text_to_image` generates an image after its
prompt: the prefix `bos {caption} {blocks of frames 0..k-1}` plus the image header is the prompt,
and the constrained engine (`generate_images`: grid constraint, guidance batched, seeded) writes
the rows, eof and eoi; the block is appended and frame k + 1 follows. The unconditional context
for classifier-free guidance is the same sequence with the caption left out (`negative_prompt`,
empty by default: what caption dropout leaves at training time). No positive suffix by default:
the training layout has none.

Context frames are resized to the generated frames' size (the model's `image_area` at the ratio of
the first context frame, or `ratio`) and encoded with `Emu3.encode_image`; at the training size
(e.g. 64x64 for a 4096-pixel area) the resize is the identity. `VideoResult.frames` holds every
frame of the clip as the model saw it: the context frames decoded back from their codes, then the
generated ones. Generated frame i uses seed `seed + i`. This module does not read or write files.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from emu3.defaults import GUIDANCE_SCALE
from emu3.generation import SamplingConfig
from emu3.generation.constraints import check_guidance_scale, image_token_count
from emu3.generation.engine import generate_images
from emu3.generation.loop import Progress
from emu3.generation.memory import check_fits, plan_generation
from emu3.pipelines.loading import Emu3
from emu3.pipelines.text_to_image import default_sampling
from emu3.prompting import grid_for_ratio, image_header, image_tokens, parse_image, render
from emu3.tokenizer import Tokenizer
from emu3.vocab import EMU3, Vocab


@dataclass
class VideoResult:
    frames: list[Image.Image]  # context frames (decoded from their codes), then the generated ones
    codes: torch.Tensor  # (T, h, w): every frame's code grid, context first
    token_ids: list[int]  # the conditional sequence `bos caption block...`, the training layout
    grid: tuple[int, int]
    num_context: int
    seeds: list[int]  # one per generated frame
    seconds: float


def video_prefix(tokenizer: Tokenizer, caption: str, frames: Sequence[torch.Tensor], vocab: Vocab = EMU3) -> list[int]:
    """`bos {caption} {image block}...` for (h, w) code grids: `examples.text_to_visual`'s ids."""
    return render(tokenizer, [[vocab.bos], caption] + [image_tokens(tokenizer, f, vocab) for f in frames])


def frame_size(m: Emu3, ratio: str | None, context: Sequence[Image.Image], image_area: int | None = None
               ) -> tuple[int, int]:
    """The (rows, columns) grid of the clip: the first context frame's ratio (else `ratio`, else 1:1)."""
    if ratio is None:
        ratio = f"{context[0].width}:{context[0].height}" if context else "1:1"
    return grid_for_ratio(ratio, m.image_area if image_area is None else image_area, m.vq.spatial_factor)


def encode_frames(m: Emu3, frames: Sequence[Image.Image], grid: tuple[int, int]) -> list[torch.Tensor]:
    """Code grids (h, w) of context frames, each resized to the grid's pixel size, whatever pixel range
    the vision tokenizer's processor asks of single images (the bundled one: exactly 4096 pixels)."""
    f = m.vq.spatial_factor
    return [m.encode_image(frame, (grid[0] * f, grid[1] * f)) for frame in frames]


def generate_video(
    m: Emu3,
    prompt: str,
    *,
    context_frames: Sequence[Image.Image] = (),
    num_frames: int,
    cfg: float = GUIDANCE_SCALE,
    sampling: SamplingConfig | None = None,
    seed: int | None = None,
    progress: Progress | None = None,
    ratio: str | None = None,
    image_area: int | None = None,
    positive_prompt: str = "",
    negative_prompt: str = "",
) -> VideoResult:
    """Generate `num_frames` new frames after `context_frames` (none: text to video), one at a time.

    `sampling` None is the model's `default_sampling`. Raises ValueError before any work when the clip
    would not fit the model's context length.
    """
    lm, tok = m.require_lm()
    sampling = sampling or default_sampling(m)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    check_guidance_scale(cfg)
    context = list(context_frames)
    h, w = frame_size(m, ratio, context, image_area)
    header = image_header(tok, h, w, m.vocab)
    caption = prompt + positive_prompt
    per_frame = image_token_count(h, w)  # generated per frame: its block after the header, then eos
    block_len = len(header) + per_frame - 1  # a frame's block in the sequence (no eos)
    total_frames = len(context) + num_frames
    text_len = len(video_prefix(tok, caption, [], m.vocab)) + 1  # + the engine's closing eos
    needed = text_len + total_frames * block_len
    limit = lm.config.max_position_embeddings
    if needed > limit:
        raise ValueError(f"{total_frames} frames of {h}x{w} codes need {needed} tokens, more than the model's "
                         f"context length of {limit} (at most {(limit - text_len) // block_len} frames)")
    device = lm.lm_head.weight.device
    check_fits(plan_generation(lm.config, dtype=lm.lm_head.weight.dtype, batch=1, new_tokens=per_frame,
                               prompt_len=needed - 1 - block_len + len(header), guidance=cfg != 1.0,
                               codebook_size=m.vocab.codebook_size, materialized_attention=device.type == "cpu"),
               device)
    start = time.perf_counter()
    grids = encode_frames(m, context, (h, w))
    base = secrets.randbelow(2**31) if seed is None else seed
    seeds = [base + i for i in range(num_frames)]
    for i, frame_seed in enumerate(seeds):
        ids = video_prefix(tok, caption, grids, m.vocab) + header
        negative = video_prefix(tok, negative_prompt, grids, m.vocab) + header
        step = None if progress is None else (lambda done, _total, i=i: progress(i * per_frame + done,
                                                                                   num_frames * per_frame))
        out = generate_images(lm, [ids], [(h, w)], vocab=m.vocab, sampling=sampling, negative_prompts=[negative],
                              cfg_scale=cfg, seeds=[frame_seed], progress=step)
        grids.append(parse_image(out[0], m.vocab))
    codes = torch.stack(grids)  # (T, h, w)
    return VideoResult(m.decode_codes(codes), codes, video_prefix(tok, caption, grids, m.vocab), (h, w),
                       len(context), seeds, time.perf_counter() - start)

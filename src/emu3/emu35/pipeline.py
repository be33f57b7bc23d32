"""Emu3.5 tasks end to end: prompt + reference images -> interleaved generation -> structured result.

`run_task` serves t2i, x2i, howto, story, explore and vla with the official settings of
`tasks.TASKS`, every one of which can be overridden. The size of generated images follows the
official policy (emu35_spec 6.3): the last reference image's grid when there are references, else
the aspect-ratio preset for t2i, else the first generated image's own choice. Seeds are per sample:
sample i uses `seed + i` (a random seed is drawn and reported when none is given). `chat` answers
questions about images with text only (our layout, `prompts.chat_prompt`; greedy by default).

This module does not parse arguments or write files (see `cli.py` and `InterleavedResult.save`).
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Sequence

from PIL import Image

from emu3.emu35.bundle import Emu35
from emu3.emu35.loop import generate_interleaved
from emu3.emu35.prompts import chat_prompt, howto_question, task_prompt, uncond_prompt
from emu3.emu35.result import IMAGE, InterleavedResult, parse_response
from emu3.emu35.tasks import INTERLEAVED_AREA, TaskSettings, image_grid, task_settings
from emu3.generation import SamplingConfig
from emu3.generation.constraints import check_guidance_scale
from emu3.generation.loop import Progress

GREEDY = SamplingConfig(greedy=True)


def run_task(
    m: Emu35,
    task: str | TaskSettings,
    prompt: str,
    images: Sequence[Image.Image] = (),
    *,
    ratio: str | None = None,
    image_area: int | None = None,
    cfg_scale: float | None = None,
    max_new_tokens: int | None = None,
    text_sampling: SamplingConfig | None = None,
    image_sampling: SamplingConfig | None = None,
    steps: int | None = None,
    seed: int | None = None,
    num_samples: int = 1,
    progress: Progress | None = None,
) -> list[InterleavedResult]:
    """Run one task on a prompt and its reference images; one result per sample.

    `ratio` ("1:1", "16:9", ..., "auto"; t2i only, default "default", the official 4:3) picks the grid; `image_area`
    (pixels) sizes the references and the t2i grid; `steps` asks howto for that many steps.
    """
    settings = task_settings(task) if isinstance(task, str) else task
    overrides = {"cfg_scale": cfg_scale, "max_new_tokens": max_new_tokens, "image_area": image_area,
                 "text": text_sampling, "image": image_sampling}
    settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    check_request(settings, images, ratio, steps, num_samples)
    grids = [m.encode_image(image, settings.image_area) for image in images]
    if grids:
        size = tuple(grids[-1].shape)
    elif settings.name == "t2i":
        size = image_grid(ratio or "default", settings.image_area)
    else:
        size = None
    question = howto_question(prompt, steps) if settings.name == "howto" else prompt
    cond = task_prompt(m.tokenizer, settings, question, grids, vocab=m.vocab, markers=m.markers)
    uncond = uncond_prompt(m.tokenizer, grids, vocab=m.vocab, markers=m.markers)
    base = secrets.randbelow(2**31) if seed is None else seed
    seeds = [base + i for i in range(num_samples)]
    start = time.perf_counter()
    outputs = generate_interleaved(
        m.lm, [cond] * num_samples, [uncond] * num_samples, vocab=m.vocab, header=m.header,
        max_new_tokens=settings.max_new_tokens, text_sampling=settings.text, image_sampling=settings.image,
        cfg_scale=settings.cfg_scale, sizes=[size] * num_samples, max_images=1 if settings.single_image else None,
        reserve_image=settings.single_image, seeds=seeds, progress=progress,
    )
    seconds = time.perf_counter() - start
    return [_result(m, settings.name, prompt, ids, s, seconds, list(images), settings.single_image)
            for ids, s in zip(outputs, seeds)]


def chat(m: Emu35, question: str, images: Sequence[Image.Image] = (), *, image_area: int = INTERLEAVED_AREA,
         max_new_tokens: int = 1024, sampling: SamplingConfig = GREEDY, seed: int | None = None,
         progress: Progress | None = None) -> InterleavedResult:
    """A text answer about zero or more images (no image may be generated)."""
    grids = [m.encode_image(image, image_area) for image in images]
    prompt = chat_prompt(m.tokenizer, question, grids, vocab=m.vocab, markers=m.markers)
    start = time.perf_counter()
    ids = generate_interleaved(
        m.lm, [prompt], None, vocab=m.vocab, header=m.header, max_new_tokens=max_new_tokens,
        text_sampling=sampling, image_sampling=sampling, max_images=0, seeds=None if seed is None else [seed],
        progress=progress,
    )[0]
    return _result(m, "chat", question, ids, seed, time.perf_counter() - start, list(images), False)


def check_request(settings: TaskSettings, images: Sequence[object], ratio: str | None = None,
                  steps: int | None = None, num_samples: int = 1) -> None:
    """Reject a request the task cannot serve (cheap: no model needed)."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    limit = settings.max_references
    if limit == 0 and images:
        raise ValueError(f"{settings.name} takes no reference images (x2i does), got {len(images)}")
    if limit is not None and len(images) > limit:
        raise ValueError(f"{settings.name} takes at most {limit} reference images, got {len(images)}")
    if ratio is not None and settings.name != "t2i":
        raise ValueError(f"an aspect ratio applies to t2i only; {settings.name} images follow the reference image "
                         "or the model's own choice")
    if ratio is not None:
        image_grid(ratio)  # an unknown preset fails here
    if steps is not None and settings.name != "howto":
        raise ValueError(f"a number of steps applies to howto only, not {settings.name}")
    check_guidance_scale(settings.cfg_scale, "the guidance scale")


def _result(m: Emu35, task: str, prompt: str, ids: list[int], seed: int | None, seconds: float,
            references: list[Image.Image], single_image: bool) -> InterleavedResult:
    segments = parse_response(ids, m.tokenizer, m.header, m.vocab, m.markers)
    for segment in segments:
        if segment.kind == IMAGE:
            segment.image = m.decode_grid(segment.grid)
    if ids and ids[-1] == m.vocab.eos:
        stopped = "eos"
    elif single_image and ids and ids[-1] == m.vocab.eoi:
        stopped = "image"
    else:
        stopped = "length"
    return InterleavedResult(task, prompt, segments, ids, stopped, seed, seconds, references)


__all__ = ["run_task", "chat", "check_request"]

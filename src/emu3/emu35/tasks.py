"""Emu3.5's tasks and their official settings (emu35_spec sections 4.5 and 5.2), as typed data.

One `TaskSettings` per task: guidance scale, token budget, pixel area of reference and generated
images, separate text and image sampling, and the prompt-layout facts that differ between tasks.
`image_grid` turns an aspect-ratio preset (or "auto") into the token grid the model must draw.

This module holds numbers only: prompt text lives in `prompts.py`, decoding in `loop.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from emu3.generation import SamplingConfig

INTERLEAVED_AREA = 720 * 720  # 518400: SFT stage 2 resolution of the interleaved tasks
IMAGE_AREA = 1024 * 1024  # 1048576: T2I / X2I


@dataclass(frozen=True)
class TaskSettings:
    """How one task is prompted and decoded.

    `single_image` tasks (t2i, x2i) must produce exactly one image and end at its `<|image end|>`
    (as the official vLLM backend stops them); the others end at eos. `images_first` puts the
    reference images before the instruction in the prompt (x2i only). `extra` is appended to the
    system prompt. `max_references` is the largest number of reference images the task accepts.
    """

    name: str
    cfg_scale: float
    max_new_tokens: int
    image_area: int
    text: SamplingConfig
    image: SamplingConfig
    single_image: bool = False
    images_first: bool = False
    extra: str = ""
    max_references: int | None = None


_TEXT = SamplingConfig(top_k=1024, top_p=0.9, temperature=1.0)
_IMAGE_5120 = SamplingConfig(top_k=5120, top_p=1.0, temperature=1.0)
_IMAGE_10240 = SamplingConfig(top_k=10240, top_p=1.0, temperature=1.0)

# The shipped configs; guidance is the Emu3.5-Image value for t2i (5.0) and the config value for x2i
# (3.0). The configs' comments recommend 2.0 for t2i/x2i with the general Emu3.5 model.
TASKS: dict[str, TaskSettings] = {
    "t2i": TaskSettings("t2i", 5.0, 5120, IMAGE_AREA, _TEXT, _IMAGE_5120, single_image=True, max_references=0),
    "x2i": TaskSettings("x2i", 3.0, 5120, IMAGE_AREA, _TEXT, _IMAGE_5120, single_image=True, images_first=True,
                        max_references=3),
    "howto": TaskSettings("howto", 3.0, 32768, INTERLEAVED_AREA, SamplingConfig(top_k=200, top_p=0.8, temperature=0.7),
                          _IMAGE_10240, extra=" Please generate a response with interleaved text and images."),
    "story": TaskSettings("story", 3.0, 32768, INTERLEAVED_AREA, _TEXT, _IMAGE_10240),
    "explore": TaskSettings("explore", 3.0, 32768, INTERLEAVED_AREA,
                            SamplingConfig(top_k=200, top_p=0.5, temperature=0.7), _IMAGE_5120),
    "vla": TaskSettings("vla", 3.0, 32768, INTERLEAVED_AREA, _TEXT, _IMAGE_10240),
}

# T2I aspect-ratio presets as token grids (rows, columns) at 1024x1024 pixels; "default" is 4:3.
ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "1:1": (64, 64), "4:3": (55, 73), "3:4": (73, 55), "16:9": (47, 85), "9:16": (85, 47),
    "3:2": (52, 78), "2:3": (78, 52), "21:9": (41, 97), "default": (55, 73),
}
AUTO = "auto"  # the model writes the size header itself


def task_settings(name: str) -> TaskSettings:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown Emu3.5 task {name!r}; choose one of {', '.join(TASKS)}") from None


def image_grid(ratio: str, image_area: int = IMAGE_AREA) -> tuple[int, int] | None:
    """The (rows, columns) grid of a preset ratio, or None for "auto".

    At the presets' own area (1024x1024 pixels) this is the official table; at another area both
    sides are scaled by sqrt(area / 1024**2) and rounded, keeping at least one token per side.
    """
    if ratio == AUTO:
        return None
    try:
        h, w = ASPECT_RATIOS[ratio]
    except KeyError:
        raise ValueError(f"unknown aspect ratio {ratio!r}; choose one of {', '.join(ASPECT_RATIOS)} or auto") from None
    if image_area <= 0:
        raise ValueError(f"image_area must be positive, got {image_area}")
    scale = math.sqrt(image_area / IMAGE_AREA)
    return max(1, round(h * scale)), max(1, round(w * scale))


__all__ = ["TaskSettings", "TASKS", "ASPECT_RATIOS", "AUTO", "IMAGE_AREA", "INTERLEAVED_AREA", "task_settings",
           "image_grid"]

"""Images in and out of Emu3.5's IBQ tokenizer, exactly as the official code (emu35_spec 4.2, 4.4).

* `ibq_size`: the pixel size an image is resized to for a target area: keep the aspect ratio,
  `h = int(sqrt(area / ratio))`, `w = int(h * ratio)`, each rounded to the nearest multiple of 16.
* `to_pixels`: RGB, bicubic resize, `array / 127.5 - 1` (float64, then float32), as (3, H, W).
* `to_image`: `((x + 1) * 127.5).clamp(0, 255)` truncated to uint8, as a PIL image.

Unlike Emu3's processor there is no min/max pixel clamp: the area alone decides the size. This
module does not run the tokenizer or know token ids.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from emu3.vision.image_processing import to_rgb

MAX_ASPECT_RATIO = 5


def ibq_size(width: int, height: int, area: int, factor: int = 16) -> tuple[int, int]:
    """(height, width) in pixels for an image of `width` x `height` resized to about `area` pixels."""
    if width < 1 or height < 1:
        raise ValueError(f"image of {width}x{height} (width x height) is empty")
    if area <= 0:
        raise ValueError(f"image_area must be positive, got {area}")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ValueError(f"image of {width}x{height} (width x height) is more elongated than "
                         f"{MAX_ASPECT_RATIO}:1, which the vision tokenizer does not support")
    ratio = width / height
    h = int(math.sqrt(area / ratio))
    w = int(h * ratio)
    h, w = (h + factor // 2) // factor * factor, (w + factor // 2) // factor * factor
    if h == 0 or w == 0:
        raise ValueError(f"image_area {area} is too small for a {width}x{height} image: it rounds to "
                         f"{w}x{h} pixels (sides are multiples of {factor})")
    return h, w


def to_pixels(image: Image.Image, area: int, factor: int = 16) -> torch.Tensor:
    """(3, H, W) float32 pixels in [-1, 1] of `image` resized to about `area` pixels."""
    image = to_rgb(image)
    h, w = ibq_size(image.width, image.height, area, factor)
    array = np.asarray(image.resize((w, h), Image.BICUBIC)) / 127.5 - 1.0  # float64, as the official code
    return torch.from_numpy(array).permute(2, 0, 1).float()


def to_image(pixels: torch.Tensor) -> Image.Image:
    """The PIL image of (3, H, W) decoded pixels."""
    array = ((pixels.detach().float().cpu() + 1) * 127.5).clamp(0, 255).to(torch.uint8)  # truncates
    return Image.fromarray(array.permute(1, 2, 0).numpy())


__all__ = ["ibq_size", "to_pixels", "to_image"]

"""Draw a `Scene` as a square RGB picture, without anti-aliasing.

A pixel takes an object's color when its centre falls inside the object's shape (see
`world.shape_mask`), so every pixel is exactly one palette color and segmentation by color is
clean. The default 64x64 is what a VQ tokenizer with an 8x spatial factor turns into an 8x8 grid;
any side from 16 pixels up draws, and ShapesEval reads pictures from 32 (`analyze.MIN_SIDE`).

This module does not place objects or draw video motion; it draws one scene at a time.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from emu3.datasets.shapes.scene import Scene
from emu3.datasets.shapes.world import PALETTE, shape_mask

DEFAULT_IMAGE_SIZE = 64
MIN_IMAGE_SIZE = 16


def render_array(scene: Scene, size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """The scene as a (size, size, 3) uint8 array."""
    if not isinstance(size, int) or size < MIN_IMAGE_SIZE:
        raise ValueError(f"image size must be an integer of at least {MIN_IMAGE_SIZE} pixels, got {size!r}")
    pixels = np.empty((size, size, 3), dtype=np.uint8)
    pixels[:] = PALETTE[scene.background]
    centres = (np.arange(size) + 0.5) / size  # (size,)
    for o in scene.objects:
        half = o.side / 2
        u = ((centres - o.x) / half)[None, :]  # (1, W)
        v = ((centres - o.y) / half)[:, None]  # (H, 1)
        pixels[shape_mask(o.shape, u, v)] = PALETTE[o.color]
    return pixels


def render(scene: Scene, size: int = DEFAULT_IMAGE_SIZE) -> Image.Image:
    """The scene as a size x size RGB PIL image."""
    return Image.fromarray(render_array(scene, size))

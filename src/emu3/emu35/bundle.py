"""`Emu35`: the Emu3.5 language model, its tokenizer and the IBQ vision tokenizer, loaded together.

It resolves the folders (the LM folder, and the IBQ folder beside it or given separately), checks
that they belong to Emu3.5, places the LM in the requested dtype and keeps IBQ in float32 by
default (its code assignment is an argmax over 131072 dot products, sensitive to rounding).
`encode_image` / `decode_grid` move between PIL images and (h, w) code grids at a pixel area.
This is what the Emu3.5 pipelines take; it does not prompt or decode tokens itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from PIL import Image

from emu3 import checkpoint
from emu3.emu35.images import ibq_size, to_image, to_pixels
from emu3.emu35.prompts import SizeHeader
from emu3.model import Transformer
from emu3.tokenizer import Tokenizer
from emu3.vision.ibq import IBQ
from emu3.vocab import EMU35, EMU35_MARKERS, Emu35Markers, Vocab


@dataclass
class Emu35:
    """Everything an Emu3.5 task needs."""

    lm: Transformer
    tokenizer: Tokenizer
    ibq: IBQ
    vocab: Vocab = EMU35
    markers: Emu35Markers = EMU35_MARKERS
    header: SizeHeader = field(init=False)

    def __post_init__(self) -> None:
        self.header = SizeHeader.from_tokenizer(self.tokenizer)
        if self.lm.config.vocab_size != self.vocab.size or self.tokenizer.vocab_size != self.vocab.size:
            raise checkpoint.CheckpointError(
                f"not an Emu3.5 vocabulary: the model has {self.lm.config.vocab_size} tokens and the tokenizer "
                f"{self.tokenizer.vocab_size}, Emu3.5 has {self.vocab.size}")
        if self.ibq.config.codebook_size != self.vocab.codebook_size:
            raise checkpoint.CheckpointError(f"the vision tokenizer has {self.ibq.config.codebook_size} codes, the "
                                             f"language model expects {self.vocab.codebook_size}")

    @classmethod
    def load(cls, model: str | os.PathLike, vision_tokenizer: str | os.PathLike | None = None, *,
             device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
             vq_dtype: torch.dtype = torch.float32, quantize: str | None = None) -> "Emu35":
        """Load from an Emu3.5 LM folder; the IBQ folder is found beside it unless given.

        `quantize` ("int8" or "fp8") stores the LM's linear weights quantized (see `emu3.quantize`).
        """
        folder = checkpoint.resolve(model)
        family = checkpoint.detect_family(folder)
        if family != checkpoint.EMU35_FAMILY:
            raise checkpoint.CheckpointError(f"{folder} is an {family} checkpoint, not Emu3.5")
        ibq_folder = (checkpoint.resolve(vision_tokenizer) if vision_tokenizer is not None
                      else checkpoint.find_ibq(folder))
        tokenizer = Tokenizer.from_dir(folder)
        return cls(lm=checkpoint.load_lm(folder, dtype=dtype, device=device, quantize=quantize), tokenizer=tokenizer,
                   ibq=checkpoint.load_ibq(ibq_folder, dtype=vq_dtype, device=device))

    @torch.inference_mode()
    def encode_image(self, image: Image.Image, area: int) -> torch.Tensor:
        """The (h, w) code grid of `image` resized to about `area` pixels.

        An area whose grid cannot fit in the model's context is refused before any pixel is resized."""
        f = self.ibq.spatial_factor
        h, w = ibq_size(image.width, image.height, area, f)
        tokens, context = (h // f) * (w // f + 1), self.lm.config.max_position_embeddings
        if tokens > context:
            raise ValueError(f"image_area {area} makes a {h // f}x{w // f} grid of {tokens} tokens, more than the "
                             f"model's context of {context}; use a smaller image area")
        pixels = to_pixels(image, area, f)
        return self.ibq.encode(pixels[None])[0].cpu()

    @torch.inference_mode()
    def decode_grid(self, grid: torch.Tensor) -> Image.Image:
        """The image of one (h, w) code grid (16h x 16w pixels)."""
        return to_image(self.ibq.decode(grid[None])[0])


__all__ = ["Emu35"]

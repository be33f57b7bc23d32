"""`Emu3`: the language model, text tokenizer, vision tokenizer and image processor, loaded together.

This is what the task pipelines take. It resolves the folders (an original LM folder with the vision
tokenizer beside it or given separately, or one -hf folder), places the LM in the requested dtype
and keeps the vision tokenizer in fp32 by default (its BatchNorm statistics want it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from PIL import Image

from emu3 import checkpoint
from emu3.compact_vocab import CompactTokenizer, load_tokenizer
from emu3.model import Transformer
from emu3.tokenizer import HF_TOKENIZER_FILE, VISION_TOKENS_FILE, Tokenizer
from emu3.vision import ImageProcessor, VisionTokenizer
from emu3.vocab import EMU3, Vocab


def _visual_tokens_source(folder, tokenizer: Tokenizer | CompactTokenizer) -> str:
    """Where an official tokenizer's visual tokens were listed, to name in a size mismatch: a file cut
    short at a line end still reads, as a smaller codebook."""
    if isinstance(tokenizer, CompactTokenizer):
        return ""
    listed = VISION_TOKENS_FILE if (folder / VISION_TOKENS_FILE).is_file() else HF_TOKENIZER_FILE
    return f"; {tokenizer.codebook_size} of the tokenizer's are visual tokens listed in {listed}: is it complete?"


@dataclass
class Emu3:
    """Everything a task needs; `lm`/`tokenizer` are None for a vision-tokenizer-only bundle."""

    lm: Transformer | None
    tokenizer: Tokenizer | CompactTokenizer | None
    vq: VisionTokenizer
    processor: ImageProcessor
    vocab: Vocab = EMU3

    @classmethod
    def load(cls, model: str | os.PathLike | None = None, vision_tokenizer: str | os.PathLike | None = None, *,
             device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
             vq_dtype: torch.dtype = torch.float32, quantize: str | None = None) -> "Emu3":
        """Load from folders (or hub ids). With no `model`, only the vision tokenizer is loaded.

        `quantize` ("int8" or "fp8") stores the LM's linear weights quantized (see `emu3.quantize`).
        """
        lm = tokenizer = None
        if model is not None:
            folder = checkpoint.resolve(model)
            vision_tokenizer = (checkpoint.resolve(vision_tokenizer) if vision_tokenizer is not None
                                else checkpoint.find_vision_tokenizer(folder))
            tokenizer = load_tokenizer(folder)
            lm = checkpoint.load_lm(folder, dtype=dtype, device=device, quantize=quantize)
            if tokenizer.vocab_size != lm.config.vocab_size:
                raise checkpoint.CheckpointError(
                    f"{folder}: the tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary is "
                    f"{lm.config.vocab_size}{_visual_tokens_source(folder, tokenizer)}")
        if vision_tokenizer is None:
            raise ValueError("give a model folder, a vision tokenizer folder, or both")
        vq, processor = checkpoint.load_vision_tokenizer(vision_tokenizer, dtype=vq_dtype, device=device)
        vocab = tokenizer.vocab if tokenizer is not None else EMU3
        if tokenizer is not None and vq.config.codebook_size != vocab.codebook_size:
            raise checkpoint.CheckpointError(
                f"the vision tokenizer {vision_tokenizer} has {vq.config.codebook_size} codes but the language "
                f"model {folder} has {vocab.codebook_size} visual tokens: they are not a pair")
        return cls(lm=lm, tokenizer=tokenizer, vq=vq, processor=processor, vocab=vocab)

    @property
    def image_area(self) -> int:
        return self.lm.config.image_area if self.lm is not None else self.processor.max_pixels

    def require_lm(self) -> tuple[Transformer, Tokenizer | CompactTokenizer]:
        if self.lm is None or self.tokenizer is None:
            raise ValueError("this task needs a language model: load one with --model DIR")
        return self.lm, self.tokenizer

    @torch.inference_mode()
    def encode_image(self, image: Image.Image, size: tuple[int, int] | None = None) -> torch.Tensor:
        """The (h, w) code grid of one image, after the official preprocessing (resized to `size`, as
        (height, width) pixels, when given)."""
        pixels = self.processor.preprocess(image, size)[0]
        return self.vq.encode(pixels[None].to(self.vq_device))[0].cpu()

    @torch.inference_mode()
    def decode_codes(self, grids: torch.Tensor) -> list[Image.Image]:
        """Images for a batch of (B, h, w) code grids."""
        pixels = self.vq.decode(grids.to(self.vq_device))
        return self.processor.postprocess(pixels.float().cpu())

    @property
    def vq_device(self) -> torch.device:
        return next(self.vq.parameters()).device


def load(model=None, vision_tokenizer=None, **kwargs):
    """Load a checkpoint of either family: `Emu3.load`, or `emu3.emu35.bundle.Emu35.load` for Emu3.5.
    With neither folder given, the bundled Shapes model (as the commands do without --model)."""
    if model is None and vision_tokenizer is None:
        from emu3.bundled import model_or_bundled

        model = model_or_bundled(None)
    if model is not None and checkpoint.detect_family(checkpoint.resolve(model)) == checkpoint.EMU35_FAMILY:
        from emu3.emu35.bundle import Emu35

        return Emu35.load(model, vision_tokenizer, **kwargs)
    return Emu3.load(model, vision_tokenizer, **kwargs)

"""Reconstruction through the vision tokenizer: an image or a clip -> codes -> pixels, with PSNR.

An image is encoded as the official 4-frame static clip and decoded back to one frame. A clip
(a folder of frames, an animated image or a video file) is encoded in groups of 4 frames; a last
group that is short is completed by repeating its final frame, and the extra frames are dropped
after decoding. PSNR compares the reconstruction with the preprocessed (resized) input.
`emu3.pipelines.frames_output` writes the frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from emu3.vision import ImageProcessor, VisionTokenizer, load_frames


@dataclass
class Reconstruction:
    codes: torch.Tensor  # (h, w) for an image, (t, h, w) for a clip
    frames: list[Image.Image]
    psnr: float


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two pixel tensors in [-1, 1] (computed on the [0, 1] scale)."""
    mse = ((a.float() - b.float()) / 2).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


@torch.inference_mode()
def reconstruct(vq: VisionTokenizer, processor: ImageProcessor, frames: list[Image.Image]) -> Reconstruction:
    """Encode and decode one image (one frame) or a clip (several frames of one size)."""
    if not frames:
        raise ValueError("nothing to reconstruct: no frames")
    pixels = processor.preprocess(frames)
    odd = next((i for i, p in enumerate(pixels) if p.shape != pixels[0].shape), None)
    if odd is not None:
        (w0, h0), (w, h) = frames[0].size, frames[odd].size
        raise ValueError(f"all frames of a clip must have the same size: frame {odd} is {w}x{h}, frame 0 {w0}x{h0}")
    pixels = torch.stack(pixels)  # (T, 3, H, W)
    device = next(vq.parameters()).device
    if len(frames) == 1:
        codes = vq.encode(pixels.to(device))[0]  # (h, w)
        out = vq.decode(codes[None])  # (1, 3, H, W)
    else:
        factor = vq.config.temporal_downsample_factor
        missing = -len(frames) % factor
        clip = torch.cat([pixels, pixels[-1:].expand(missing, -1, -1, -1)]) if missing else pixels
        codes = vq.encode(clip[None].to(device))[0]  # (t, h, w)
        out = vq.decode(codes[None])[0, : len(frames)]  # (T, 3, H, W)
    out = out.float().cpu()
    return Reconstruction(codes.cpu(), processor.postprocess(out), psnr(out.clamp(-1, 1), pixels))


def reconstruct_path(vq: VisionTokenizer, processor: ImageProcessor, path: str | Path) -> Reconstruction:
    """`reconstruct` on an image file, a folder of frames, an animated image or a video."""
    return reconstruct(vq, processor, load_frames(path))

"""Code aliases for uniform patches: after `emu3 merge-codes`, a flat area of one color tokenizes to
one code wherever it is.

A VQ encoder sees far beyond its own patch, so the latents of identical flat patches differ with
their surroundings, and a codebook fitted to them (k-means puts most centres where most latents
are: on backgrounds) spends dozens of codes on each flat color. The pictures decode about the same,
but a language model trained on the codes must predict which of those near-identical codes each
background patch got: tokenizer noise that dominates its loss and that it reproduces when sampling.

`uniform_aliases` measures, on a sample of pictures, the patches each code gets. A code is uniform
when its patches deviate from their own mean color by less than `tol` on average (the [0, 1] scale);
uniform codes whose mean colors agree within `color_tol` (on every channel) form a group, and the group's
most used code becomes the canonical code of all of them. The table goes into the tokenizer folder
(`code_aliases.json`); encoding then returns canonical codes, decoding is unchanged, and the
encoder, decoder and codebook keep their weights. Data tokenized before must be tokenized again;
`emu3 train-vq --decoder-only` can then adapt the decoder to the canonical codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from emu3.train.manifest import Record
from emu3.vision import ImageProcessor, VisionTokenizer, load_frames, load_image


@dataclass(frozen=True)
class MergeReport:
    groups: int  # canonical codes (one per flat color found)
    merged_codes: int  # codes that now encode as another
    uniform_patches: float  # share of the sample's patches that are uniform
    canonical_share: float  # share of the uniform patches that get a canonical code after the merge
    codes_before: int  # distinct codes of the sample before and after
    codes_after: int


def patch_stats(pixels: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per `factor`-square patch of (B, 3, H, W) pixels in [-1, 1]: mean absolute deviation from the
    patch's mean color (N,) and that color (N, 3), on the [0, 1] scale; patches in (b, row, col) order."""
    x = (pixels.detach().float().cpu() + 1) / 2
    b, c, h, w = x.shape
    patches = x.reshape(b, c, h // factor, factor, w // factor, factor).permute(0, 2, 4, 1, 3, 5)
    patches = patches.reshape(-1, c, factor * factor)  # (N, 3, f*f)
    color = patches.mean(-1)  # (N, 3)
    return (patches - color[..., None]).abs().mean((1, 2)), color


def uniform_aliases(codes: torch.Tensor, deviation: torch.Tensor, color: torch.Tensor, size: int,
                    tol: float, color_tol: float) -> torch.Tensor:
    """The (size,) code -> canonical code table for patches with `codes` (N,) and `patch_stats`."""
    if not (0 < tol < 1 and 0 < color_tol < 1):
        raise ValueError(f"tol and color_tol must be in (0, 1), got {tol} and {color_tol}")
    if not (len(codes) == len(deviation) == len(color)):
        raise ValueError(f"codes, deviation and color must describe the same patches, got {len(codes)}, "
                         f"{len(deviation)} and {len(color)}")
    codes = codes.long().cpu()
    count = torch.bincount(codes, minlength=size).float()
    per = count.clamp_min(1)
    mean_dev = torch.zeros(size).index_add_(0, codes, deviation.float().cpu()) / per
    mean_color = torch.zeros(size, 3).index_add_(0, codes, color.float().cpu()) / per[:, None]
    table = torch.arange(size)
    canonical: list[int] = []
    for code in count.argsort(descending=True, stable=True).tolist():
        if count[code] == 0:
            break
        if mean_dev[code] >= tol:
            continue
        match = next((c for c in canonical if (mean_color[code] - mean_color[c]).abs().max() < color_tol), None)
        if match is None:
            canonical.append(code)
        else:
            table[code] = match
    return table


def first_frame(record: Record) -> Image.Image:
    """A manifest record's picture: its image, or the first frame of its clip."""
    if record.image is not None:
        return load_image(record.image)
    return load_image(record.frames[0]) if record.frames else load_frames(record.video)[0]


@torch.no_grad()
def patch_codes(vq: VisionTokenizer, processor: ImageProcessor, records: list[Record], batch: int = 64
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, deviation, color) of every patch of `records`' pictures (images, or the first frame of
    clips) preprocessed as for tokenizing: `vq`'s codes (N,) and the patches' `patch_stats`."""
    by_size: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for p in processor.preprocess([first_frame(r) for r in records]):
        by_size.setdefault(tuple(p.shape), []).append(p)
    device = vq.quantize.embedding.weight.device
    codes, deviation, color = [], [], []
    for same in by_size.values():
        for start in range(0, len(same), batch):
            x = torch.stack(same[start:start + batch])
            codes.append(vq.encode(x.to(device)).flatten().cpu())
            dev, col = patch_stats(x, vq.spatial_factor)
            deviation.append(dev)
            color.append(col)
    return torch.cat(codes), torch.cat(deviation), torch.cat(color)


def merge_uniform_codes(vq: VisionTokenizer, processor: ImageProcessor, manifest: str, *, tol: float,
                        color_tol: float, samples: int = 1024, seed: int = 0, batch: int = 64) -> MergeReport:
    """Give `vq` the code aliases of its uniform codes (replacing any it had), measured on up to
    `samples` pictures of `manifest` (images, or the first frame of clips) preprocessed as for tokenizing."""
    from emu3.train.vq import read_media

    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    records, _ = read_media(manifest)
    order = np.random.default_rng(seed).permutation(len(records))[:samples]
    vq.quantize.set_aliases(None)
    codes, deviation, color = patch_codes(vq, processor, [records[i] for i in order], batch)
    table = uniform_aliases(codes, deviation, color, vq.config.codebook_size, tol, color_tol)
    vq.quantize.set_aliases(table)
    after = table[codes]
    uniform = deviation < tol
    canonical = torch.zeros(len(table), dtype=torch.bool)
    canonical[table[table != torch.arange(len(table))]] = True
    return MergeReport(groups=int(canonical.sum()), merged_codes=int((table != torch.arange(len(table))).sum()),
                       uniform_patches=float(uniform.float().mean()),
                       canonical_share=float(canonical[after[uniform]].float().mean()) if uniform.any() else 0.0,
                       codes_before=len(codes.unique()), codes_after=len(after.unique()))

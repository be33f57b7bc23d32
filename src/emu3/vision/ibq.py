"""The Emu3.5 vision tokenizer (IBQ): images <-> integer codes, 16x downsampling, 131072 codes.

`IBQ(IBQConfig)` has the module tree of the official `IBQ` (a taming-VQGAN encoder/decoder with
GroupNorm everywhere, a codebook `quantize.embedding`, 1x1 `quant_conv` / `post_quant_conv`), so
the official `model.ckpt` state dict loads with `strict=True`. The residual, attention and
resampling blocks and the per-level containers are the Emu3 tokenizer's own (`vision.layers`,
`vision.vq`) used without their SpatialNorm conditioning: IBQ is their plain 2-D special case.

* `encode(pixels)`: (B, 3, H, W) in [-1, 1] -> (B, H/16, W/16) int64 codes. The code of a latent
  vector z is `argmax_k <z, e_k>` (a dot product, not the L2-nearest code), computed in float32.
* `decode(codes)`: (B, h, w) -> (B, 3, 16h, 16w) pixels, roughly in [-1, 1].

This module does not read files, resize images or map codes to language-model ids, and does not
train (no straight-through estimator, no quantization or entropy losses).
"""

from __future__ import annotations

import torch
from torch import nn

from emu3.config import IBQConfig
from emu3.vision.layers import group_norm, swish
from emu3.vision.vq import DownLevel, MidBlock, UpLevel

# Entries of the code-score matrix computed at once (2**25 float32 = 128 MiB per temporary).
_CHUNK_ELEMENTS = 2**25


class IBQEncoder(nn.Module):
    """Pixels (B, 3, H, W) -> latents (B, z_channels, H/16, W/16)."""

    def __init__(self, cfg: IBQConfig):
        super().__init__()
        ch, mult = cfg.ch, cfg.ch_mult
        in_mult = (1,) + mult
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, kernel_size=3, padding=1)
        self.down = nn.ModuleList(
            DownLevel(ch * in_mult[level], ch * mult[level], cfg.num_res_blocks, cfg.level_has_attention(level),
                      cfg.dropout, downsample=level != len(mult) - 1)
            for level in range(len(mult))
        )
        top = ch * mult[-1]
        self.mid = MidBlock(top, None, cfg.dropout)
        self.norm_out = group_norm(top)
        self.conv_out = nn.Conv2d(top, cfg.z_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))


class IBQDecoder(nn.Module):
    """Latents (B, z_channels, h, w) -> pixels (B, 3, 16h, 16w)."""

    def __init__(self, cfg: IBQConfig):
        super().__init__()
        ch, mult = cfg.ch, cfg.ch_mult
        top = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, top, kernel_size=3, padding=1)
        self.mid = MidBlock(top, None, cfg.dropout)
        # `up[level]` is indexed by level but run from the last level down to level 0.
        self.up = nn.ModuleList(
            UpLevel(ch * mult[min(level + 1, len(mult) - 1)], ch * mult[level], cfg.num_res_blocks + 1,
                    cfg.level_has_attention(level), None, cfg.dropout, upsample=level != 0)
            for level in range(len(mult))
        )
        self.norm_out = group_norm(ch * mult[0])
        self.conv_out = nn.Conv2d(ch * mult[0], cfg.out_channels, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h, None)
        return self.conv_out(swish(self.norm_out(h)))


class DotProductCodebook(nn.Module):
    """`embedding` (K, E): a latent's code is the entry with the largest dot product."""

    def __init__(self, codebook_size: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, embed_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, E, h, w) latents -> (B, h, w) int64 codes, scored in float32 chunks of rows."""
        b, e, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, e).float()  # (N, E)
        codebook = self.embedding.weight.float()  # (K, E)
        chunk = max(1, _CHUNK_ELEMENTS // codebook.shape[0])
        codes = torch.cat([(rows @ codebook.T).argmax(dim=1) for rows in flat.split(chunk)])  # (N,)
        return codes.view(b, h, w)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) codes -> (B, E, h, w) codebook vectors."""
        return self.embedding(codes).permute(0, 3, 1, 2)


class IBQ(nn.Module):
    """The Emu3.5 IBQ autoencoder (module names of the official checkpoint)."""

    def __init__(self, config: IBQConfig):
        super().__init__()
        self.config = config
        self.encoder = IBQEncoder(config)
        self.decoder = IBQDecoder(config)
        self.quantize = DotProductCodebook(config.codebook_size, config.embed_dim)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, kernel_size=1)
        self.eval()

    @property
    def spatial_factor(self) -> int:
        return self.config.spatial_factor

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels in [-1, 1] -> (B, H/16, W/16) int64 codes."""
        if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4 or not pixels.is_floating_point():
            shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
            raise ValueError(f"IBQ.encode expects a float (B, 3, H, W) tensor in [-1, 1], got {shape}")
        channels, height, width = pixels.shape[1:]
        f = self.spatial_factor
        if channels != self.config.in_channels:
            raise ValueError(f"IBQ.encode expects {self.config.in_channels} channels, got shape {tuple(pixels.shape)}")
        if height == 0 or width == 0 or height % f or width % f:
            raise ValueError(f"image height and width must be positive multiples of {f}, got {height}x{width}")
        weight = self.quant_conv.weight
        h = self.quant_conv(self.encoder(pixels.to(device=weight.device, dtype=weight.dtype)))  # (B, E, h, w)
        return self.quantize(h)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) codes -> (B, 3, 16h, 16w) pixels."""
        if not isinstance(codes, torch.Tensor) or codes.ndim != 3 or codes.is_floating_point() or codes.numel() == 0:
            shape = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise ValueError(f"IBQ.decode expects a non-empty integer (B, h, w) tensor of codes, got {shape}")
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= self.config.codebook_size:
            raise ValueError(f"codes must lie in [0, {self.config.codebook_size}), got values in [{low}, {high}]")
        weight = self.quantize.embedding.weight
        zq = self.quantize.lookup(codes.to(device=weight.device, dtype=torch.long))  # (B, E, h, w)
        return self.decoder(self.post_quant_conv(zq))


__all__ = ["IBQ", "IBQDecoder", "IBQEncoder", "DotProductCodebook"]

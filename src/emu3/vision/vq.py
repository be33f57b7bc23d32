"""The Emu3 vision tokenizer: pixels <-> integer codes, for images and videos.

`VisionTokenizer(VQConfig)` has the module tree of the official `Emu3VisionVQModel`, so the official
`model.safetensors` loads with `strict=True`. An image is treated as a static clip of
`temporal_downsample_factor` (4) repeated frames; a video is cut by the causal temporal convolutions
into groups of 4 frames, one latent frame each.

* `encode(pixels)`: (B, 3, H, W) -> (B, H/8, W/8) int64 codes, or (B, T, 3, H, W) -> (B, T/4, H/8, W/8).
* `decode(codes)`: (B, h, w) -> (B, 3, 8h, 8w) (frame 0 of the 4 decoded frames), or
  (B, t, h, w) -> (B, 4t, 3, 8h, 8w).

The per-frame 2-D parts run once per distinct frame: encoding an image runs the 2-D encoder on one
frame and repeats its output 4x in time (the frames are identical), and decoding an image runs the
2-D decoder on frame 0 only. Both are exact rewrites of the official computation.

This module does not read files, resize images or map codes to language-model ids; it does not
train (no commitment loss, no straight-through estimator). BatchNorm follows the usual train/eval
switch; the tokenizer is built in eval mode so that it uses the checkpoint's running statistics.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from emu3.config import VQConfig
from emu3.vision.layers import (
    AttnBlock, CausalConv3d, Downsample, ResnetBlock, ResnetTemporalBlock, TemporalDownsample,
    TemporalUpsample, Upsample, apply_norm, group_norm, make_norm, swish,
)

# Entries of the code-distance matrix computed at once (2**25 float32 = 128 MiB per temporary).
_QUANTIZE_CHUNK_ELEMENTS = 2**25


class MidBlock(nn.Module):
    """ResnetBlock -> AttnBlock -> ResnetBlock at the lowest resolution (`mid.block_1/attn_1/block_2`)."""

    def __init__(self, channels: int, zq_channels: int | None, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, zq_channels, dropout)
        self.attn_1 = AttnBlock(channels, zq_channels)
        self.block_2 = ResnetBlock(channels, channels, zq_channels, dropout)

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x, zq), zq), zq)


class Level(nn.Module):
    """One resolution level: residual blocks, each followed by attention when the level has it."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, attn: bool,
                 zq_channels: int | None, dropout: float):
        super().__init__()
        self.block = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, zq_channels, dropout)
            for i in range(num_blocks)
        )
        self.attn = nn.ModuleList(AttnBlock(out_channels, zq_channels) for _ in range(num_blocks if attn else 0))

    def run_blocks(self, x: torch.Tensor, zq: torch.Tensor | None) -> torch.Tensor:
        for i, block in enumerate(self.block):
            x = block(x, zq)
            if len(self.attn):
                x = self.attn[i](x, zq)
        return x


class DownLevel(Level):
    """Encoder level (`encoder.down.{L}`): blocks, then an optional `downsample`."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, attn: bool, dropout: float,
                 downsample: bool):
        super().__init__(in_channels, out_channels, num_blocks, attn, None, dropout)
        self.downsample = Downsample(out_channels) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.run_blocks(x, None)
        return x if self.downsample is None else self.downsample(x)


class UpLevel(Level):
    """Decoder level (`decoder.up.{L}`): SpatialNorm-conditioned blocks, then an optional `upsample`."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, attn: bool, zq_channels: int,
                 dropout: float, upsample: bool):
        super().__init__(in_channels, out_channels, num_blocks, attn, zq_channels, dropout)
        self.upsample = Upsample(out_channels) if upsample else None

    def forward(self, x: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        x = self.run_blocks(x, zq)
        return x if self.upsample is None else self.upsample(x)


class Encoder(nn.Module):
    """Pixels (B, T, 3, H, W) -> latents (B, T/4, z_channels, H/8, W/8)."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        ch, mult = cfg.ch, cfg.ch_mult
        in_mult = (1,) + mult
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, kernel_size=3, padding=1)
        self.down = nn.ModuleList()
        for level in range(len(mult)):
            self.down.append(DownLevel(ch * in_mult[level], ch * mult[level], cfg.num_res_blocks,
                                       level in cfg.attn_resolutions, cfg.dropout, level != len(mult) - 1))
        top = ch * mult[-1]
        self.mid = MidBlock(top, None, cfg.dropout)
        self.norm_out = group_norm(top)
        self.conv_out = nn.Conv2d(top, cfg.z_channels, kernel_size=3, padding=1)
        num_halvings = int(math.log2(cfg.temporal_downsample_factor))
        self.time_conv = nn.ModuleList(TemporalDownsample(cfg.z_channels) for _ in range(num_halvings))
        self.time_res_stack = nn.ModuleList(
            ResnetTemporalBlock(cfg.z_channels, cfg.dropout) for _ in range(cfg.num_res_blocks)
        )

    def spatial(self, x: torch.Tensor) -> torch.Tensor:
        """Per-frame 2-D encoder: (N, 3, H, W) -> (N, z_channels, H/8, W/8)."""
        h = self.conv_in(x)
        for stage in self.down:
            h = stage(h)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))

    def temporal(self, h: torch.Tensor) -> torch.Tensor:
        """Causal temporal stack: (B, T, z, h, w) -> (B, T/4, z, h, w)."""
        h = h.permute(0, 2, 1, 3, 4)  # (B, z, T, h, w)
        for conv in self.time_conv:
            h = swish(conv(h))
        for block in self.time_res_stack:
            h = block(h)
        return h.permute(0, 2, 1, 3, 4)  # (B, T/4, z, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        h = self.spatial(x.flatten(0, 1))  # (B*T, z, h, w)
        return self.temporal(h.unflatten(0, (b, t)))


class Decoder(nn.Module):
    """Latents z and codebook vectors zq, both (B, t, 4, h, w) -> frames (B*4t, 3, 8h, 8w)."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        ch, mult, zq_ch = cfg.ch, cfg.ch_mult, cfg.embed_dim
        self.time_res_stack = nn.ModuleList(
            ResnetTemporalBlock(cfg.z_channels, cfg.dropout) for _ in range(cfg.num_res_blocks)
        )
        num_doublings = int(math.log2(cfg.temporal_downsample_factor))
        self.time_conv = nn.ModuleList(TemporalUpsample(cfg.z_channels) for _ in range(num_doublings))
        top = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, top, kernel_size=3, padding=1)
        self.mid = MidBlock(top, zq_ch, cfg.dropout)
        # `up[level]` is indexed by level but run from the last level to level 0.
        self.up = nn.ModuleList()
        for level in range(len(mult)):
            self.up.append(UpLevel(ch * mult[min(level + 1, len(mult) - 1)], ch * mult[level],
                                   cfg.num_res_blocks + 1, level in cfg.attn_resolutions, zq_ch, cfg.dropout,
                                   level != 0))
        self.norm_out = make_norm(ch * mult[0], zq_ch)
        self.conv_out = nn.Conv2d(ch * mult[0], cfg.out_channels, kernel_size=3, padding=1)

    def temporal(self, z: torch.Tensor, zq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shared causal temporal stack for both streams: (B, t, 4, h, w) x2 -> (B, 4t, 4, h, w) x2."""
        h = torch.cat([z, zq]).permute(0, 2, 1, 3, 4)  # (2B, 4, t, h, w)
        for block in self.time_res_stack:
            h = block(h)
        for conv in self.time_conv:
            h = swish(conv(h))
        z, zq = h.permute(0, 2, 1, 3, 4).chunk(2)
        return z, zq

    def spatial(self, z: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        """Per-frame 2-D decoder: z, zq (N, 4, h, w) -> (N, 3, 8h, 8w)."""
        h = self.mid(self.conv_in(z), zq)
        for stage in reversed(self.up):
            h = stage(h, zq)
        return self.conv_out(swish(apply_norm(self.norm_out, h, zq)))

    def forward(self, z: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        z, zq = self.temporal(z, zq)
        return self.spatial(z.flatten(0, 1), zq.flatten(0, 1))


class VectorQuantizer(nn.Module):
    """Codebook of `codebook_size` vectors; encode = nearest code under squared L2, decode = lookup.

    Optional code aliases (`set_aliases`) map codes that decode alike onto one canonical code, which
    encoding then returns instead (see `emu3.train.code_merge`); official tokenizers have none."""

    def __init__(self, codebook_size: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, embed_dim)
        # code -> the code that encoding returns; not in the state dict (the official weights lack it).
        # Built on the meta device (checkpoint loading), it is made on the CPU: a meta `arange` costs half a
        # second of imports, and loading installs the real table with `set_aliases` anyway.
        meta = self.embedding.weight.is_meta
        self.register_buffer("canonical", torch.arange(codebook_size, device="cpu" if meta else None),
                             persistent=False)

    def set_aliases(self, canonical: torch.Tensor | None) -> None:
        """Install a (K,) code -> canonical code table; None restores the identity."""
        size = self.embedding.num_embeddings
        table = torch.arange(size) if canonical is None else torch.as_tensor(canonical, dtype=torch.long)
        if table.shape != (size,) or int(table.min()) < 0 or int(table.max()) >= size:
            raise ValueError(f"a code alias table needs {size} codes in [0, {size}), got shape {tuple(table.shape)}")
        device = self.embedding.weight.device
        self.canonical = table.to("cpu" if device.type == "meta" else device)

    def aliases(self) -> torch.Tensor | None:
        """The code -> canonical code table, or None when every code is its own."""
        identity = torch.arange(len(self.canonical), device=self.canonical.device)
        return None if torch.equal(self.canonical, identity) else self.canonical.clone()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, T, E, h, w) latents -> (B, T, h, w) int64 codes.

        Distances ||z||^2 + ||e||^2 - 2 z.e are computed in float32 (the argmin of a bfloat16 distance
        would pick wrong codes), in chunks of rows to bound memory."""
        b, t, e, h, w = z.shape
        flat = z.permute(0, 1, 3, 4, 2).reshape(-1, e).float()  # (N, E)
        codebook = self.embedding.weight.float()  # (K, E)
        codebook_sq = codebook.square().sum(dim=1)  # (K,)
        chunk = max(1, _QUANTIZE_CHUNK_ELEMENTS // codebook.shape[0])
        codes = torch.cat([
            (rows.square().sum(dim=1, keepdim=True) + codebook_sq).sub_(rows @ codebook.T, alpha=2).argmin(dim=1)
            for rows in flat.split(chunk)
        ])  # (N,)
        return self.canonical.to(codes.device)[codes].view(b, t, h, w)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, T, h, w) codes -> (B, T, E, h, w) codebook vectors."""
        return self.embedding(codes).permute(0, 1, 4, 2, 3)


class VisionTokenizer(nn.Module):
    """The Emu3 VQ autoencoder (module names of the official checkpoint)."""

    def __init__(self, config: VQConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = VectorQuantizer(config.codebook_size, config.embed_dim)
        self.quant_conv = CausalConv3d(config.z_channels, config.embed_dim, kernel_size=(3, 1, 1))
        self.post_quant_conv = CausalConv3d(config.embed_dim, config.z_channels, kernel_size=(3, 1, 1))
        self.eval()

    @property
    def spatial_factor(self) -> int:
        return self.config.spatial_factor

    @property
    def temporal_factor(self) -> int:
        return self.config.temporal_downsample_factor

    def _check_pixels(self, pixels: torch.Tensor) -> None:
        if not isinstance(pixels, torch.Tensor):
            raise TypeError(f"encode expects a torch.Tensor, got {type(pixels).__name__}")
        if pixels.ndim not in (4, 5):
            raise ValueError(f"encode expects (B, 3, H, W) images or (B, T, 3, H, W) videos, "
                             f"got a {pixels.ndim}-D tensor of shape {tuple(pixels.shape)}")
        if not pixels.is_floating_point():
            raise ValueError(f"encode expects float pixels in [-1, 1], got dtype {pixels.dtype}")
        channels, height, width = pixels.shape[-3:]
        if channels != self.config.in_channels:
            raise ValueError(f"encode expects {self.config.in_channels} channels in dim {pixels.ndim - 3}, "
                             f"got shape {tuple(pixels.shape)}")
        f = self.spatial_factor
        if height == 0 or width == 0 or height % f or width % f:
            raise ValueError(f"image height and width must be positive multiples of {f}, got {height}x{width}")
        if pixels.ndim == 5 and (pixels.shape[1] == 0 or pixels.shape[1] % self.temporal_factor):
            raise ValueError(f"the number of frames must be a positive multiple of {self.temporal_factor}, "
                             f"got {pixels.shape[1]}")

    def latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pre-quantization latents (B, t, E, H/8, W/8) of (B, 3, H, W) images (t = 1: an image is the
        official static clip of 4 identical frames) or (B, T, 3, H, W) clips (t = T/4). No input checks."""
        if pixels.ndim == 4:
            h = self.encoder.spatial(pixels)  # (B, z, h, w): the 4 repeated frames share it
            h = h.unsqueeze(1).expand(-1, self.temporal_factor, -1, -1, -1)  # (B, 4, z, h, w)
            h = self.encoder.temporal(h)  # (B, 1, z, h, w)
        else:
            h = self.encoder(pixels)  # (B, T/4, z, h, w)
        return self.quant_conv(h.permute(0, 2, 1, 3, 4)).permute(0, 2, 1, 3, 4)  # (B, t, E, h, w)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, H/8, W/8) codes; (B, T, 3, H, W) -> (B, T/4, H/8, W/8) codes (int64)."""
        self._check_pixels(pixels)
        weight = self.quantize.embedding.weight
        codes = self.quantize(self.latents(pixels.to(device=weight.device, dtype=weight.dtype)))  # (B, t, h, w)
        return codes[:, 0] if pixels.ndim == 4 else codes

    def _check_codes(self, codes: torch.Tensor) -> None:
        if not isinstance(codes, torch.Tensor):
            raise TypeError(f"decode expects a torch.Tensor of codes, got {type(codes).__name__}")
        if codes.ndim not in (3, 4):
            raise ValueError(f"decode expects (B, h, w) image codes or (B, t, h, w) video codes, "
                             f"got a {codes.ndim}-D tensor of shape {tuple(codes.shape)}")
        if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
            raise ValueError(f"decode expects integer codes, got dtype {codes.dtype}")
        if codes.numel() == 0:
            raise ValueError(f"decode got an empty code tensor of shape {tuple(codes.shape)}")
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= self.config.codebook_size:
            raise ValueError(f"codes must lie in [0, {self.config.codebook_size}), got values in [{low}, {high}]")

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) -> (B, 3, 8h, 8w) pixels; (B, t, h, w) -> (B, 4t, 3, 8h, 8w) pixels (roughly [-1, 1])."""
        self._check_codes(codes)
        is_image = codes.ndim == 3
        grid = codes.unsqueeze(1) if is_image else codes  # (B, t, h, w)
        grid = grid.to(device=self.quantize.embedding.weight.device, dtype=torch.long)
        return self.decode_vectors(self.quantize.lookup(grid), is_image)

    def decode_vectors(self, zq: torch.Tensor, image: bool) -> torch.Tensor:
        """Codebook-space vectors (B, t, E, h, w) -> (B, 3, 8h, 8w) frame 0 when `image`, else (B, 4t, 3, 8h, 8w)
        frames: `decode` after the codebook lookup (training decodes its straight-through vectors with it)."""
        z = self.post_quant_conv(zq.permute(0, 2, 1, 3, 4)).permute(0, 2, 1, 3, 4)  # (B, t, z, h, w)
        if image:  # only frame 0 is returned for an image, so only frame 0 runs the 2-D decoder
            z, zq = self.decoder.temporal(z, zq)  # (B, 4, ., h, w) each
            return self.decoder.spatial(z[:, 0], zq[:, 0])  # (B, 3, 8h, 8w)
        frames = self.decoder(z, zq)  # (B*4t, 3, 8h, 8w)
        return frames.unflatten(0, (zq.shape[0], zq.shape[1] * self.temporal_factor))  # (B, 4t, 3, 8h, 8w)


__all__ = ["Encoder", "Decoder", "VectorQuantizer", "VisionTokenizer"]

"""Building blocks of the Emu3 vision tokenizer (a MoVQ-style VQ autoencoder with causal 3-D convs).

Each block keeps the attribute names of the official `Emu3VisionVQModel` so that the official
state dict loads with `strict=True` (`norm1`, `conv1`, `nin_shortcut`, `norm_layer`, `conv_y`,
`conv_b`, `q`/`k`/`v`/`proj_out` as 1x1 convs, `conv.conv` inside the temporal convs, BatchNorm3d
running statistics). The numerics follow the official code; two rewrites are exact and cheaper:
SpatialNorm applies its 1x1 convs before the nearest-neighbour upsampling of the codes (a 1x1 conv
commutes with it), and attention runs through `scaled_dot_product_attention`.

This module does not assemble the encoder/decoder (see `vq.py`), validate user input, or know
about checkpoints; `VQConfig` values arrive as plain constructor arguments.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def swish(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x), the activation used everywhere in the tokenizer."""
    return x * torch.sigmoid(x)


def group_norm(channels: int) -> nn.GroupNorm:
    """The tokenizer's GroupNorm: 32 groups, eps 1e-6, affine."""
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class SpatialNorm(nn.Module):
    """MoVQ conditioning: GroupNorm(x) * conv_y(zq) + conv_b(zq), with zq resized to x (nearest)."""

    def __init__(self, channels: int, zq_channels: int):
        super().__init__()
        self.norm_layer = group_norm(channels)
        self.conv_y = nn.Conv2d(zq_channels, channels, kernel_size=1)
        self.conv_b = nn.Conv2d(zq_channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        # x: (N, C, H, W); zq: (N, E, h, w) with H, W integer multiples of h, w.
        size = x.shape[-2:]
        scale = F.interpolate(self.conv_y(zq), size=size, mode="nearest")  # (N, C, H, W)
        shift = F.interpolate(self.conv_b(zq), size=size, mode="nearest")  # (N, C, H, W)
        return torch.addcmul(shift, self.norm_layer(x), scale)


def make_norm(channels: int, zq_channels: int | None) -> nn.Module:
    """GroupNorm for the encoder (`zq_channels` None), SpatialNorm(·, zq) for the decoder."""
    return group_norm(channels) if zq_channels is None else SpatialNorm(channels, zq_channels)


def apply_norm(norm: nn.Module, x: torch.Tensor, zq: torch.Tensor | None) -> torch.Tensor:
    """Call a norm made by `make_norm`, passing zq only to a SpatialNorm."""
    return norm(x) if zq is None else norm(x, zq)


class ResnetBlock(nn.Module):
    """2-D residual block: conv3x3(swish(norm)) twice, 1x1 `nin_shortcut` when channels change."""

    def __init__(self, in_channels: int, out_channels: int, zq_channels: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.norm1 = make_norm(in_channels, zq_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = make_norm(out_channels, zq_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        # x: (N, C_in, H, W) -> (N, C_out, H, W)
        h = self.conv1(swish(apply_norm(self.norm1, x, zq)))
        h = self.conv2(self.dropout(swish(apply_norm(self.norm2, h, zq))))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, with 1x1-conv projections and a residual."""

    def __init__(self, channels: int, zq_channels: int | None = None):
        super().__init__()
        self.norm = make_norm(channels, zq_channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        n, c, height, width = x.shape
        nx = apply_norm(self.norm, x, zq)
        q, k, v = (proj(nx).reshape(n, 1, c, height * width).transpose(-1, -2) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # (N, 1, HW, C), softmax(q k^T / sqrt(C)) v
        out = out.transpose(-1, -2).reshape(n, c, height, width)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Halve H and W: zero-pad right/bottom by one, then a stride-2 3x3 conv without padding."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # (N, C, H, W) -> (N, C, H/2, W/2)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (N, C, 2H, 2W)


class CausalConv3d(nn.Module):
    """Conv3d on (N, C, T, H, W) with explicit padding: k-s split left-heavy in H and W, and a temporal
    front pad of 2 frames whatever the kernel (as in the official tokenizer), no back pad."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int, int],
                 stride: tuple[int, int, int] = (1, 1, 1)):
        super().__init__()
        pad_h, pad_w = (k - s for k, s in zip(kernel_size[1:], stride[1:]))
        self.padding = (pad_w - pad_w // 2, pad_w // 2, pad_h - pad_h // 2, pad_h // 2, 2, 0)
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.padding))


class ResnetTemporalBlock(nn.Module):
    """Residual block over (N, C, T, H, W) with BatchNorm3d and causal 3x3x3 convs (C -> C)."""

    def __init__(self, channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.BatchNorm3d(channels)
        self.conv1 = CausalConv3d(channels, channels, kernel_size=(3, 3, 3))
        self.norm2 = nn.BatchNorm3d(channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = CausalConv3d(channels, channels, kernel_size=(3, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        return x + h


class TemporalDownsample(nn.Module):
    """Halve T with a causal conv, kernel (4, 3, 3), stride (2, 1, 1): T -> (T + 2 - 4) // 2 + 1."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, kernel_size=(4, 3, 3), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # (N, C, T, H, W) -> (N, C, T/2, H, W)


class TemporalUpsample(nn.Module):
    """Double T (nearest, i.e. each frame repeated twice), then a causal 3x3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, kernel_size=(3, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.repeat_interleave(2, dim=2))  # (N, C, T, H, W) -> (N, C, 2T, H, W)


__all__ = [
    "swish", "group_norm", "make_norm", "apply_norm", "SpatialNorm", "ResnetBlock", "AttnBlock", "Downsample",
    "Upsample", "CausalConv3d", "ResnetTemporalBlock", "TemporalDownsample", "TemporalUpsample",
]

"""Rotary position embeddings (Llama/NeoX "rotate_half" layout), computed from positions on the fly.

cos/sin are derived from the position tensor in every forward instead of being cached in buffers:
that is cheap next to the projections, keeps the module free of state (so building on the meta
device and assigning weights leaves nothing uninitialised) and works with any per-row positions.
"""

from __future__ import annotations

import torch


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin of shape (B, 1, T, head_dim) for integer `positions` of shape (B, T)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    freqs = positions.to(torch.float32)[..., None] * inv_freq  # (B, T, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, D)
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` (B, H, T, D) by the angles whose cos/sin are (B, 1, T, D)."""
    return x * cos + rotate_half(x) * sin

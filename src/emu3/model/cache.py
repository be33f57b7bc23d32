"""A preallocated, static key/value cache for incremental decoding.

The generation loop owns it and passes it into `Transformer.forward`. Shapes never change after
construction, so the decode step is friendly to `torch.compile` and CUDA graphs. Rows may be left
padded: `pad_offsets[b]` slots at the start of row b hold padding that attention must skip, and the
row's rotary positions start at zero after them.
"""

from __future__ import annotations

import torch


class KVCache:
    """Per-layer K and V buffers of shape (B, H_kv, S, D), plus each row's left-padding length."""

    def __init__(self, num_layers: int, batch: int, num_kv_heads: int, max_len: int, head_dim: int, *,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        shape = (batch, num_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.pad_offsets = torch.zeros(batch, dtype=torch.long, device=device)
        self.max_len = max_len

    @classmethod
    def for_model(cls, model, batch: int, max_len: int, *, dtype=None, device=None) -> "KVCache":
        cfg = model.config
        ref = model.lm_head.weight
        if max_len > cfg.max_position_embeddings:
            raise ValueError(f"a sequence of {max_len} tokens exceeds the model's context of "
                             f"{cfg.max_position_embeddings} (max_position_embeddings)")
        return cls(cfg.num_layers, batch, cfg.num_kv_heads, max_len, cfg.head_size,
                   dtype=dtype or ref.dtype, device=device or ref.device)

    def update(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, H_kv, T, D) at cache `slots` (T,) and return the whole layer buffers."""
        self.k[layer].index_copy_(2, slots, k)
        self.v[layer].index_copy_(2, slots, v)
        return self.k[layer], self.v[layer]

    def attention_mask(self, slots: torch.Tensor) -> torch.Tensor:
        """Boolean (B, 1, T, S) mask: a query at slot s sees slots <= s that are not left padding."""
        keys = torch.arange(self.max_len, device=slots.device)
        causal = keys[None, :] <= slots[:, None]  # (T, S)
        not_pad = keys[None, :] >= self.pad_offsets[:, None]  # (B, S)
        return causal[None, None] & not_pad[:, None, None]

    def positions(self, slots: torch.Tensor) -> torch.Tensor:
        """Rotary positions (B, T) of the tokens written at `slots`: slot minus the row's padding."""
        return slots[None, :] - self.pad_offsets[:, None]

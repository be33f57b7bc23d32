"""A static KV cache whose rows may skip slots, for two streams that advance at different rates.

Emu3.5's guidance stream sees only the generated images, not the generated text (emu35_spec 6.4),
while the conditional stream sees everything. Both rows run in one batched forward per step with
shared cache slots; a slot the unconditional row must not see is written but marked invalid, so
no later query attends to it, and each row's rotary positions count only its valid slots. Left
padding is the same thing at the start of a row. Shapes never change after construction.

The owner calls `admit(slots, valid)` before each forward that writes `slots`. This module
decides nothing about which tokens are valid.
"""

from __future__ import annotations

import torch

from emu3.model import KVCache


class GappedCache(KVCache):
    """`KVCache` plus `valid` (B, S) slot flags and the rotary position `pos` (B, S) of each slot."""

    def __init__(self, num_layers: int, batch: int, num_kv_heads: int, max_len: int, head_dim: int, *,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        super().__init__(num_layers, batch, num_kv_heads, max_len, head_dim, dtype=dtype, device=device)
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.pos = torch.zeros(batch, max_len, dtype=torch.long, device=device)
        self.count = torch.zeros(batch, dtype=torch.long, device=device)  # valid slots so far, per row

    def admit(self, slots: torch.Tensor, valid: torch.Tensor) -> None:
        """Declare which of the tokens about to be written at `slots` (T,) each row keeps: (B, T) bools."""
        self.valid[:, slots] = valid
        self.pos[:, slots] = self.count[:, None] + valid.long().cumsum(-1) - 1
        self.count += valid.long().sum(-1)

    def attention_mask(self, slots: torch.Tensor) -> torch.Tensor:
        """Boolean (B, 1, T, S): a query at slot s sees the valid slots <= s of its row."""
        keys = torch.arange(self.max_len, device=slots.device)
        causal = keys[None, :] <= slots[:, None]  # (T, S)
        return causal[None, None] & self.valid[:, None, None, :]

    def positions(self, slots: torch.Tensor) -> torch.Tensor:
        """Rotary positions (B, T): the number of valid slots of the row before each token."""
        return self.pos[:, slots]


__all__ = ["GappedCache"]

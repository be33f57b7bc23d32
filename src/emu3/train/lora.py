"""LoRA: low-rank adapters on linear layers, merged back into plain weights for saving.

`LoRALinear` is an `nn.Linear` (so `weight` keeps its checkpoint name and stays frozen) with two
extra parameters, `lora_A` (r, in) and `lora_B` (out, r): y = x W^T + (dropout(x) A^T B^T) * alpha / r.
B starts at zero, so a freshly wrapped model computes exactly what the base model did.
`add_lora` swaps the chosen linears in place and freezes everything else; `merge_lora` folds the
adapters of a state dict into the weights (W + scale * B A) and drops the adapter keys, so saved
checkpoints are plain models that `checkpoint.load_lm` reads. This module knows nothing of
optimizers, files or distributed training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ADAPTER_KEYS = ("lora_A", "lora_B")


class LoRALinear(nn.Linear):
    """A linear layer with a trainable low-rank update; the base weight is frozen."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, dropout: float,
                 device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias=False, device=device, dtype=dtype)
        self.rank, self.scale = rank, alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=dtype))
        self.lora_dropout = nn.Dropout(dropout)
        self.weight.requires_grad_(False)

    @classmethod
    def wrap(cls, linear: nn.Linear, rank: int, alpha: float, dropout: float,
             generator: torch.Generator | None) -> LoRALinear:
        if linear.bias is not None:
            raise ValueError("LoRA here wraps bias-free linears only (Emu3 has no biases)")
        w = linear.weight
        layer = cls(linear.in_features, linear.out_features, rank, alpha, dropout, device=w.device, dtype=w.dtype)
        layer.weight = nn.Parameter(w.detach(), requires_grad=False)
        with torch.no_grad():  # kaiming-uniform(a=sqrt(5)) as nn.Linear, drawn from our generator
            bound = 1 / math.sqrt(linear.in_features)
            layer.lora_A.uniform_(-bound, bound, generator=generator)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = F.linear(x, self.weight)
        return base + F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scale={self.scale:g}"


def add_lora(model: nn.Module, targets: list[str], rank: int, alpha: float, dropout: float, seed: int) -> int:
    """Wrap every `nn.Linear` whose attribute name is in `targets`; freeze all other parameters.

    Returns the number of wrapped layers (an error if none matched)."""
    for p in model.parameters():
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    wrapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if name in targets and type(child) is nn.Linear:
                lora = LoRALinear.wrap(child, rank, alpha, dropout, generator)
                setattr(module, name, lora)
                wrapped += 1
    if not wrapped:
        raise ValueError(f"no linear layer is named one of {targets}; nothing to adapt")
    return wrapped


def merge_lora(state: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """A plain state dict: each `X.weight` plus scale * `X.lora_B` @ `X.lora_A`, adapter keys removed."""
    out = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        if leaf in ADAPTER_KEYS:
            continue
        if leaf == "weight" and f"{prefix}.lora_A" in state:
            a, b = state[f"{prefix}.lora_A"].float(), state[f"{prefix}.lora_B"].float()
            value = (value.float() + scale * (b @ a)).to(value.dtype)
        out[key] = value
    return out

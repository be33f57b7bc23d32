"""AdamW with decoupled weight decay on matrices only, and the warmup + cosine-to-minimum schedule.

`lr_at(step)` is the official `cosine_with_min_lr` schedule (transformers' Trainer, as used by the
Emu3 recipe): linear from 0 over `warmup_steps`, then a half cosine from `lr` down to `min_lr` at
`total_steps`. The schedule is a pure function of the step, so it needs no state of its own in a
checkpoint. Weight decay applies to parameters with 2+ dimensions (linear, embedding and LoRA
matrices), not to norm weights or biases. This module does not clip or step; the loop does.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from emu3.train.config import LoopConfig


def lr_at(step: int, cfg: LoopConfig, total_steps: int) -> float:
    """The learning rate for optimizer step `step` (0-based) of `total_steps`."""
    if step < cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * cosine


def build_optimizer(model: nn.Module, cfg: LoopConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of `model`, in a decay group and a no-decay group."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters")
    groups = [{"params": ps, "weight_decay": wd} for ps, wd in ((decay, cfg.weight_decay), (no_decay, 0.0)) if ps]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)

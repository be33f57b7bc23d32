"""Memory planning for image generation: what a run will need, checked before it starts.

The estimate adds the language model's weights (exact, from the config and dtype, or the real bytes
of a loaded, possibly quantized model), the static KV cache (exact: every row, layer, slot), and the
peak of the transient activations: the prefill of all rows (the MLP's three intermediate tensors
dominate, plus the attention scores when SDPA has to materialise them, as on a CPU), or a decode
step with its visual-slice scores and sampling buffers, whichever is larger. `check_fits` refuses up
front, with the numbers, when the device does not have that much memory free.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from emu3.config import LMConfig

GiB = 2**30


@dataclass(frozen=True)
class MemoryPlan:
    weights: int
    kv_cache: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations

    def describe(self) -> str:
        return (f"{self.total / GiB:.2f} GiB (weights {self.weights / GiB:.2f}, KV cache {self.kv_cache / GiB:.2f}, "
                f"activations {self.activations / GiB:.2f})")


def lm_weight_bytes(cfg: LMConfig, dtype: torch.dtype) -> int:
    """Bytes of an unquantized LM's parameters."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_heads * cfg.head_size, cfg.num_kv_heads * cfg.head_size
    per_layer = h * (q + 2 * kv) + q * h + 3 * h * i + 2 * h + (2 * cfg.head_size if cfg.qk_norm else 0)
    params = 2 * cfg.vocab_size * h + cfg.num_layers * per_layer + h
    return params * torch.finfo(dtype).bits // 8


def plan_generation(cfg: LMConfig, *, dtype: torch.dtype, batch: int, prompt_len: int, new_tokens: int,
                    guidance: bool = True, draft_len: int = 0, codebook_size: int = 32768,
                    materialized_attention: bool = True, weight_bytes: int | None = None) -> MemoryPlan:
    """The memory a `generate_images` run needs (see the module docstring).

    `materialized_attention`: whether SDPA builds the (rows, heads, T, S) score matrix in prefill
    (the CPU math kernel does; flash / memory-efficient kernels on a GPU do not).
    """
    e = torch.finfo(dtype).bits // 8
    rows = batch * (2 if guidance else 1)
    slots = prompt_len + new_tokens - 1  # the cache of `generate_images`: the last token is never fed
    kv = 2 * cfg.num_layers * rows * cfg.num_kv_heads * slots * cfg.head_size * e
    q_width = cfg.num_heads * cfg.head_size
    tokens = rows * prompt_len
    mlp = 3 * tokens * cfg.intermediate_size * e
    attention = tokens * (q_width * 3 + 4 * cfg.head_size * 2) * e  # q, its rotation, output; cos/sin
    if materialized_attention:
        attention += rows * cfg.num_heads * prompt_len * slots * 4 + rows * prompt_len * slots  # fp32 scores, mask
    residual = 3 * tokens * cfg.hidden_size * e
    prefill = residual + max(mlp, attention)
    # A decode step keeps about 14 fp32 (batch, window, codebook) buffers alive at its peak: the scores
    # of both streams, log-softmaxes, the guided mix, warping, probabilities, proposals and noise.
    window = max(1, draft_len)
    decode = batch * window * codebook_size * 4 * 14 + rows * window * (cfg.hidden_size + cfg.intermediate_size) * e * 4
    weights = weight_bytes if weight_bytes is not None else lm_weight_bytes(cfg, dtype)
    return MemoryPlan(weights=weights, kv_cache=kv, activations=max(prefill, decode))


def available_bytes(device: torch.device) -> int:
    """Free memory on `device`: CUDA's free bytes plus what torch's caching allocator holds reserved but
    unused (a long-running server keeps the blocks of earlier runs, which the next run reuses), or the
    host's available memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_fits(plan: MemoryPlan, device: torch.device, *, already_loaded: bool = True) -> None:
    """Raise a clear error when the run will not fit; `already_loaded`: the weights are resident."""
    need = plan.total - (plan.weights if already_loaded else 0)
    free = available_bytes(device)
    if need > free:
        raise MemoryError(f"this generation needs {need / GiB:.2f} GiB more on {device} but only {free / GiB:.2f} GiB "
                          f"is free; plan: {plan.describe()}. Use fewer images per batch, a smaller image area, "
                          "a lower-precision dtype, or --quantize int8")

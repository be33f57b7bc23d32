"""Weight-only quantization of the language model's linear layers, through torchao.

`int8` keeps one int8 weight per parameter plus a scale per output channel (about half the bf16
size, a quarter of fp32), on any device; `fp8` (float8 e4m3 weights) needs a GPU with compute
capability 8.9 or newer. Embeddings and norms stay as they are. The quantized `lm_head` still slices
(the fast loop reads only its visual rows). torchao is an optional dependency (`pip install
'emu3[quant]'`), imported only here and only when asked for.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

MODES = ("int8", "fp8")


def _torchao():
    # torchao logs a warning for each optional CUDA kernel library it cannot load; on a CPU that is noise.
    logging.getLogger("torchao").setLevel(logging.ERROR)
    try:
        import torchao.quantization as quant
    except ImportError:
        raise ValueError("weight quantization needs torchao: pip install torchao") from None
    return quant


def check_mode(mode: str, device: str | torch.device) -> None:
    """Refuse a mode that is unknown, that `device` cannot run or that lacks torchao: cheap, so a loader
    calls it before reading any weight."""
    if mode not in MODES:
        raise ValueError(f"unknown quantization {mode!r}; choose one of {', '.join(MODES)}")
    device = torch.device(device)
    if mode == "fp8" and (device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9)):
        raise ValueError("fp8 weights need a CUDA GPU with compute capability >= 8.9 (Ada, Hopper or newer)")
    _torchao()


def quantize_lm(model: nn.Module, mode: str) -> nn.Module:
    """Quantize every `nn.Linear` weight of `model` in place (and return it)."""
    check_mode(mode, next(model.parameters()).device)
    quant = _torchao()
    config = quant.Float8WeightOnlyConfig() if mode == "fp8" else quant.Int8WeightOnlyConfig()
    quant.quantize_(model, config, filter_fn=lambda module, fqn: isinstance(module, nn.Linear))
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by the parameters, counting a quantized weight's real storage (data and scales)."""
    total = 0
    for param in model.parameters():
        inner = getattr(param, "__tensor_flatten__", None)
        if inner is None:
            total += param.numel() * param.element_size()
        else:
            names, _ = inner()
            total += sum(getattr(param, n).numel() * getattr(param, n).element_size() for n in names)
    return total

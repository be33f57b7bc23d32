"""Function-preserving growth of a trained model: more depth, computing at first exactly what it computed.

Vision tokenizer: `deepen(vq, extra)` returns a tokenizer with `num_res_blocks + extra` whose every new residual block
(and new attention block, at levels that have attention) starts as the identity: the last
convolution of the residual branch (`conv2`, `proj_out` for attention) is zero, the rest random. The
grown tokenizer therefore computes exactly what `vq` computes, codes included, and `emu3 train-vq
--decoder-only --add-res-blocks N` can give the decoder more capacity without changing a single code
of data already tokenized (nor the language model trained on them). The encoder grows too (the config
has one `num_res_blocks` for both sides, as in the official format), but its new blocks stay the
identity when only the decoder trains.

Language model: `deepen_lm(lm, extra)` returns an LM with `num_layers + extra` layers, the new ones
spread evenly through the stack (`layer_plan`). Each new layer is a copy of the layer before it with
the two projections that write into the residual stream (`o_proj`, `down_proj`) set to zero, as in
LLaMA Pro's block expansion: the grown LM computes the same logits, its new layers start from weights
that already read the stream well, and `emu3 train --add-layers N` continues from the trained model
with more capacity instead of starting a bigger one from nothing.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from emu3.config import LMConfig
from emu3.model import Transformer
from emu3.model.meta import build_on_meta
from emu3.vision import VisionTokenizer
from emu3.vision.layers import AttnBlock, ResnetBlock, ResnetTemporalBlock


def _zero_residual_branch(module: nn.Module) -> None:
    """Make a freshly built residual or attention block the identity (its branch outputs zeros)."""
    last = module.proj_out if isinstance(module, AttnBlock) else module.conv2
    for p in last.parameters():
        nn.init.zeros_(p)


def identity_blocks(state: dict[str, torch.Tensor]) -> tuple[str, ...]:
    """Key prefixes of the residual and attention blocks of `state` that compute the identity whatever
    their other weights hold: the last convolution of the branch (`conv2`, the temporal `conv2.conv`,
    `proj_out`) all zeros and no `nin_shortcut` (a block that changes the channel count maps its input
    through that): the blocks `_zero_residual_branch` makes, found in saved weights (an export
    stores them in a smaller dtype, since no rounding of their weights can move a code)."""
    found = []
    for key, tensor in state.items():
        for last in ("conv2.weight", "conv2.conv.weight", "proj_out.weight"):
            prefix = key[: -len(last)]
            if key.endswith("." + last) and prefix + "nin_shortcut.weight" not in state:
                bias = state.get(prefix + last.replace("weight", "bias"))
                if not tensor.any() and (bias is None or not bias.any()):
                    found.append(prefix)
    return tuple(found)


@torch.no_grad()
def deepen(vq: VisionTokenizer, extra: int, seed: int = 0) -> VisionTokenizer:
    """`vq` with `extra` more residual blocks per level, computing the same function (see the module)."""
    if extra < 0:
        raise ValueError(f"extra residual blocks must be >= 0, got {extra}")
    if extra == 0:
        return vq
    config = dataclasses.replace(vq.config, num_res_blocks=vq.config.num_res_blocks + extra)
    torch.manual_seed(seed)
    grown = VisionTokenizer(config)
    missing, unexpected = grown.load_state_dict(vq.state_dict(), strict=False)
    if unexpected:
        raise ValueError(f"deepen: weights without a place in the grown tokenizer: {unexpected[:5]}")
    for name, module in grown.named_modules():  # the blocks `vq` had load every weight; new ones none
        if isinstance(module, (ResnetBlock, ResnetTemporalBlock, AttnBlock)) and any(
                key.startswith(name + ".") for key in missing):
            _zero_residual_branch(module)
    grown.quantize.set_aliases(vq.quantize.aliases())
    return grown.train(vq.training)


# The projections of a decoder layer that write into the residual stream: zero makes the layer the identity.
_RESIDUAL_WRITERS = ("self_attn.o_proj.weight", "mlp.down_proj.weight")


def layer_plan(layers: int, extra: int) -> list[tuple[int, bool]]:
    """For each layer of a stack of `layers` grown by `extra`: (the old layer it starts from, whether it
    is a new identity copy). New layers follow old ones spread evenly, the last one after the last layer."""
    if layers < 1 or extra < 0:
        raise ValueError(f"cannot grow {layers} layers by {extra}: need layers >= 1 and extra >= 0")
    copies = [0] * layers
    for i in range(extra):
        copies[-(-(i + 1) * layers // extra) - 1] += 1  # ceil((i + 1) * layers / extra) - 1
    return [(old, new) for old in range(layers) for new in [False] + [True] * copies[old]]


def deepened_config(config: LMConfig, extra: int) -> LMConfig:
    """The architecture `deepen_lm(lm, extra)` returns for an LM of `config` (what a checkpoint of a run
    with `--add-layers extra` holds)."""
    return dataclasses.replace(config, num_layers=config.num_layers + extra)


@torch.no_grad()
def deepen_lm(lm: Transformer, extra: int) -> Transformer:
    """`lm` with `extra` more decoder layers, computing the same function (see the module). The grown
    model takes over `lm`'s tensors (only the new layers are new memory), so `lm` is consumed: training
    the grown model changes it."""
    if extra == 0:
        return lm
    plan = layer_plan(lm.config.num_layers, extra)
    state = lm.state_dict()
    grown_state = {k: v for k, v in state.items() if not k.startswith("model.layers.")}
    for index, (old, new) in enumerate(plan):
        prefix = f"model.layers.{old}."
        for key, value in state.items():
            if key.startswith(prefix):
                name = key[len(prefix):]
                if new:
                    value = torch.zeros_like(value) if name in _RESIDUAL_WRITERS else value.clone()
                grown_state[f"model.layers.{index}.{name}"] = value
    with build_on_meta():
        grown = Transformer(deepened_config(lm.config, extra))
    grown.load_state_dict(grown_state, strict=True, assign=True)
    grown.gradient_checkpointing = lm.gradient_checkpointing
    return grown.train(lm.training)

"""Function-preserving growth of a vision tokenizer: more residual blocks per level.

`deepen(vq, extra)` returns a tokenizer with `num_res_blocks + extra` whose every new residual block
(and new attention block, at levels that have attention) starts as the identity: the last
convolution of the residual branch (`conv2`, `proj_out` for attention) is zero, the rest random. The
grown tokenizer therefore computes exactly what `vq` computes, codes included, and `emu3 train-vq
--decoder-only --add-res-blocks N` can give the decoder more capacity without changing a single code
of data already tokenized (nor the language model trained on them). The encoder grows too (the config
has one `num_res_blocks` for both sides, as in the official format), but its new blocks stay the
identity when only the decoder trains.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from emu3.vision import VisionTokenizer
from emu3.vision.layers import AttnBlock, ResnetBlock, ResnetTemporalBlock


def _zero_residual_branch(module: nn.Module) -> None:
    """Make a freshly built residual or attention block the identity (its branch outputs zeros)."""
    last = module.proj_out if isinstance(module, AttnBlock) else module.conv2
    for p in last.parameters():
        nn.init.zeros_(p)


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

"""Key maps between the original Emu3 checkpoint names and the transformers "-hf" names.

Original (BAAI/Emu3-{Gen,Chat,Stage1} + BAAI/Emu3-VisionTokenizer) <-> transformers on-disk
(legacy) layout of `*-hf` checkpoints, as written by transformers' conversion script:

* LM: `model.*` <-> `text_model.model.*`, `lm_head.weight` <-> `text_model.lm_head.weight`.
* VQ: `encoder.*` <-> `vqmodel.encoder.*` (same for decoder, quantize, quant_conv, post_quant_conv),
  with the attention renames `q/k/v/proj_out` <-> `q_proj/k_proj/v_proj/out_proj`, the attention
  norms moved out (`mid.attn_1.norm` <-> `mid.attn_norm`, `attn.{i}.norm` <-> `attn_norms.{i}`),
  and `down` <-> `down_block.down`, `up` <-> `up_block.up`, `mid` <-> `middle_block`.
* Tensors: the VQ attention projections are 1x1 convs [C, C, 1, 1] in the original and
  Linear [C, C] in transformers; `original_tensor_to_hf` / `hf_tensor_to_original` convert one
  tensor given its key in either naming, the `*_state_dict_*` functions convert names and tensors.

Each rule is a pair of templates (original, hf) applied in a fixed order; the inverse applies the
same pairs swapped, in reverse order, and every inverse result is checked by mapping it forward
again, so the two directions are inverse bijections on the keys they accept. `hf_to_original` also
accepts the in-memory names of transformers 5.x (`model.text_model.*`, `model.vqmodel.*`,
top-level `lm_head.weight`).

This module maps names and tensor layouts only: it does not read or write files (checkpoint.py
does) and does not convert configs or tokenizers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

Rule = tuple[re.Pattern[str], str]


def _compile(source: str, target: str) -> Rule:
    """A template pair -> (regex on `source`, replacement producing `target`).

    Templates are literal text with optional `^`/`$` anchors and `{i}` for a layer/block index."""
    anchored_start, anchored_end = source.startswith("^"), source.endswith("$")
    body = source.removeprefix("^").removesuffix("$")
    pattern = re.escape(body).replace(re.escape("{i}"), r"(?P<i>\d+)")
    pattern = ("^" if anchored_start else "") + pattern + ("$" if anchored_end else "")
    replacement = target.removeprefix("^").removesuffix("$").replace("{i}", r"\g<i>")
    return re.compile(pattern), replacement


class _RuleTable:
    """Ordered (original, hf) template pairs; `forward` maps original -> hf, `inverse` hf -> original."""

    def __init__(self, pairs: list[tuple[str, str]]):
        self.forward_rules = [_compile(orig, hf) for orig, hf in pairs]
        self.inverse_rules = [_compile(hf, orig) for orig, hf in reversed(pairs)]
        # The first pair of a table decides which keys belong to it.
        self.original_domain = self.forward_rules[0][0]
        self.hf_domain = self.inverse_rules[-1][0]

    @staticmethod
    def _apply(rules: list[Rule], key: str) -> str:
        for pattern, replacement in rules:
            key = pattern.sub(replacement, key)
        return key

    def forward(self, key: str) -> str:
        return self._apply(self.forward_rules, key)

    def inverse(self, key: str) -> str:
        return self._apply(self.inverse_rules, key)


# One table per domain (LM head, LM body, each top-level VQ module).
_LM_HEAD = _RuleTable([("^lm_head.weight$", "^text_model.lm_head.weight$")])
_LM_BODY = _RuleTable([("^model.", "^text_model.model.")])
_VQ_TABLES = [
    _RuleTable([
        (f"^{module}.", f"^vqmodel.{module}."),
        (".q.", ".q_proj."),
        (".k.", ".k_proj."),
        (".v.", ".v_proj."),
        (".proj_out.", ".out_proj."),
        # The attention norms move out of the attention block; before ".mid." is renamed.
        ("mid.attn_1.norm.", "mid.attn_norm."),
        (".attn.{i}.norm.", ".attn_norms.{i}."),
        (".down.", ".down_block.down."),
        (".up.", ".up_block.up."),
        (".mid.", ".middle_block."),
    ])
    for module in ("encoder", "decoder", "quantize", "quant_conv", "post_quant_conv")
]
_TABLES = [_LM_HEAD, _LM_BODY, *_VQ_TABLES]

# transformers 5.x in-memory names -> on-disk legacy names (applied before `hf_to_original`).
_HF_IN_MEMORY = [
    _compile("^model.text_model.", "^text_model.model."),
    _compile("^model.vqmodel.", "^vqmodel."),
    _compile("^lm_head.", "^text_model.lm_head."),
]

# Original VQ attention projections: 1x1 Conv2d weights, Linear in transformers.
_VQ_ATTN_WEIGHT = re.compile(r"^(encoder|decoder)\..*\.(q|k|v|proj_out)\.weight$")


def original_to_hf(key: str) -> str:
    """An original checkpoint key -> its transformers on-disk ("-hf") key."""
    for table in _TABLES:
        if table.original_domain.search(key):
            return table.forward(key)
    raise KeyError(f"{key!r} is not an original Emu3 LM or vision-tokenizer key")


def hf_to_original(key: str) -> str:
    """A transformers "-hf" key (on-disk legacy or 5.x in-memory) -> the original checkpoint key."""
    disk_key = key
    for pattern, replacement in _HF_IN_MEMORY:
        if pattern.search(disk_key):
            disk_key = pattern.sub(replacement, disk_key)
            break
    for table in _TABLES:
        if table.hf_domain.search(disk_key):
            original = table.inverse(disk_key)
            if table.forward(original) == disk_key:
                return original
            break
    raise KeyError(f"{key!r} is not a transformers Emu3 key (no rule maps it back to an original key)")


def _is_vq_attn_weight(key: str) -> bool:
    """Whether `key` (original or hf naming) is a VQ attention projection weight."""
    if _VQ_ATTN_WEIGHT.match(key):
        return True
    try:
        return _VQ_ATTN_WEIGHT.match(hf_to_original(key)) is not None
    except KeyError:  # an original name of another tensor
        return False


def original_tensor_to_hf(key: str, tensor: torch.Tensor) -> torch.Tensor:
    """The hf layout of the tensor stored under `key` (original or hf naming): VQ attention
    projections go from 1x1 conv [C, C, 1, 1] to Linear [C, C]; everything else is unchanged."""
    if _is_vq_attn_weight(key):
        if tensor.ndim != 4 or tuple(tensor.shape[2:]) != (1, 1):
            raise ValueError(f"{key}: expected a 1x1 conv weight [C, C, 1, 1], got shape {tuple(tensor.shape)}")
        tensor = tensor.reshape(tensor.shape[:2])
    return tensor


def hf_tensor_to_original(key: str, tensor: torch.Tensor) -> torch.Tensor:
    """The original layout of the tensor stored under `key` (hf or original naming): VQ attention
    projections go from Linear [C, C] to 1x1 conv [C, C, 1, 1]; everything else is unchanged."""
    if _is_vq_attn_weight(key):
        if tensor.ndim != 2:
            raise ValueError(f"{key}: expected a Linear weight [C, C], got shape {tuple(tensor.shape)}")
        tensor = tensor[:, :, None, None]
    return tensor


def _convert(state_dict: Mapping[str, torch.Tensor], rename, convert) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    for key, tensor in state_dict.items():
        new_key = rename(key)
        if new_key in out:
            raise ValueError(f"keys {sources[new_key]!r} and {key!r} both map to {new_key!r}")
        out[new_key], sources[new_key] = convert(key, tensor), key
    return out


def original_state_dict_to_hf(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A whole original state dict (LM and/or VQ) -> transformers on-disk names and layouts."""
    return _convert(state_dict, original_to_hf, original_tensor_to_hf)


def hf_state_dict_to_original(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A whole transformers state dict (on-disk or 5.x in-memory names) -> original names and layouts."""
    return _convert(state_dict, hf_to_original, hf_tensor_to_original)


__all__ = [
    "original_to_hf", "hf_to_original", "original_tensor_to_hf", "hf_tensor_to_original",
    "original_state_dict_to_hf", "hf_state_dict_to_original",
]

"""The Emu3 language model: a Llama-style pre-norm decoder over text and visual token ids.

RMSNorm, rotary embeddings (theta 1e6), grouped-query attention through SDPA, SwiGLU MLP and an
untied output head. Parameter names equal the official checkpoint keys (`model.layers.N...`,
`lm_head.weight`), so original checkpoints load with no renaming. Optional per-head q/k RMSNorm
(`qk_norm`) and a decoupled `head_dim` cover Emu3.5. This module knows nothing of tokenizers,
sampling or images: ids in, hidden states or fp32 logits out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emu3.config import LMConfig
from emu3.model.cache import KVCache
from emu3.model.rope import apply_rope, rope_cos_sin


class RMSNorm(nn.Module):
    """Normalise in fp32, cast back, then scale (the Llama order)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
              dropout: float) -> torch.Tensor:
    """Grouped-query SDPA of q (B, H, T, D) over k, v (B, Hkv, S, D); causal when `mask` is None.

    Training in bf16 on a CPU (autocast or bf16 weights) runs this one op in fp32: PyTorch's CPU
    flash-attention backward is slower in bf16 than in fp32 (torch 2.13 on an AMX CPU: 56 against
    40 ms per layer for 16 x 300 tokens), while the matmuls around it take 4x less time in bf16.
    Inference keeps bf16, whose forward is faster. The output has v's dtype.
    """
    training = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    upcast = (q.device.type == "cpu" and training
              and (torch.is_autocast_enabled("cpu") or v.dtype == torch.bfloat16))
    if not upcast:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, dropout_p=dropout,
                                              enable_gqa=True)
    mask = mask.float() if mask is not None and mask.is_floating_point() else mask
    with torch.autocast("cpu", enabled=False):
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, is_causal=mask is None,
                                             dropout_p=dropout, enable_gqa=True)
    return out.to(v.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_size
        self.dropout = cfg.dropout
        self.q_proj = nn.Linear(cfg.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask, layer: int, cache: KVCache | None, slots):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q.transpose(1, 2), cos, sin)  # (B, H, T, D)
        k = apply_rope(k.transpose(1, 2), cos, sin)  # (B, Hkv, T, D)
        if cache is not None:
            k, v = cache.update(layer, slots, k, v)  # (B, Hkv, S, D)
        out = attention(q, k, v, mask, self.dropout if self.training else 0.0)  # (B, H, T, D)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LMConfig, index: int) -> None:
        super().__init__()
        self.index = index
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)  # residual dropout, active in training only

    def forward(self, x, cos, sin, mask, cache, slots):
        x = x + self.dropout(self.self_attn(self.input_layernorm(x), cos, sin, mask, self.index, cache, slots))
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))


class DecoderStack(nn.Module):
    """Embedding, decoder layers and the final norm: the checkpoint's `model.*` part."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)  # embedding dropout (Emu3-specific), training only


class Transformer(nn.Module):
    """Decoder-only LM. `forward(ids, input_pos, cache)` -> fp32 logits (B, T, V)."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = DecoderStack(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.gradient_checkpointing = False

    def hidden(self, ids: torch.Tensor, input_pos: torch.Tensor | None = None,
               cache: KVCache | None = None) -> torch.Tensor:
        """Final-norm hidden states (B, T, C) for token `ids` (B, T) written at `input_pos` (T,).

        With a cache, `input_pos` are cache slots and the cache supplies left-padding offsets;
        without one the sequence is processed causally from `input_pos` (default 0..T-1).
        """
        B, T = ids.shape
        if input_pos is None:
            input_pos = torch.arange(T, device=ids.device)
        if cache is None:
            positions, mask = input_pos[None].expand(B, T), None
        else:
            positions, mask = cache.positions(input_pos), cache.attention_mask(input_pos)
        cfg = self.config
        x = self.model.dropout(self.model.embed_tokens(ids))
        cos, sin = rope_cos_sin(positions, cfg.head_size, cfg.rope_theta, x.dtype)
        for layer in self.model.layers:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, mask, cache, input_pos, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache, input_pos)
        return self.model.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Output-head logits in fp32 for hidden states (..., C)."""
        return self.lm_head(hidden).float()

    def forward(self, ids: torch.Tensor, input_pos: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        return self.logits(self.hidden(ids, input_pos, cache))

    @torch.no_grad()
    def init_weights(self, std: float = 0.02, generator: torch.Generator | None = None) -> None:
        """The official initialisation: N(0, std) for linear and embedding weights, zero pad row."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, std, generator=generator)
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)
        self.model.embed_tokens.weight[self.config.pad_token_id].zero_()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

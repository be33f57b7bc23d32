"""Typed configurations for the Emu3-family language models and vision tokenizers.

`LMConfig` (Emu3 and Emu3.5 LMs), `VQConfig` (Emu3's MoVQ tokenizer) and `IBQConfig` (Emu3.5's IBQ
tokenizer) are frozen dataclasses with named presets ("emu3-8b", "emu3.5-34b", "emu3.5-ibq", "tiny", ...).
`from_official` reads an official config (`config.json` in the original "Emu3" or transformers "-hf"
layouts; IBQ's `config.yaml` once parsed into a dict);
our own dictionaries go through `from_dict`, which rejects unknown keys. Loading weights and finding
files are `checkpoint.py`'s job, not this module's.
"""

from __future__ import annotations

import dataclasses
import numbers
import re
import warnings
from dataclasses import dataclass
from typing import Any

# Keys of official/transformers config files that carry no architectural meaning for us.
_IGNORED_OFFICIAL_KEYS = frozenset(
    {
        "architectures", "auto_map", "model_type", "torch_dtype", "dtype", "transformers_version",
        "use_cache", "pretraining_tp", "initializer_range", "hidden_act", "tie_word_embeddings",
        "_name_or_path", "rope_scaling", "output_attentions", "output_hidden_states", "return_dict",
        "is_encoder_decoder", "attention_bias", "mlp_bias", "vocabulary_map", "image_token_id",
        "tokenizer_class", "processor_class", "_attn_implementation_autoset", "layer_types",
        "chunk_size_feed_forward", "id2label", "label2id", "problem_type", "text_config", "vq_config",
    }
)


def _check_numbers(cfg: Any, positive: tuple[str, ...], non_negative: tuple[str, ...] = (),
                   positive_real: tuple[str, ...] = (), fractions: tuple[str, ...] = ()) -> None:
    """Raise a ValueError naming the field when a count is not a positive (or non-negative) integer,
    a real-valued setting is not a positive number, or a fraction (a dropout) is not in [0, 1)
    (config files can hold strings, nulls, floats)."""
    for name in positive + non_negative:
        value = getattr(cfg, name)
        low = 1 if name in positive else 0
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            kind = "a positive integer" if low else "a non-negative integer"
            raise ValueError(f"{name} must be {kind}, got {value!r}")
    for name in positive_real:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    for name in fractions:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
            raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")


def _reject_unknown(cls: type, data: dict[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}; known keys are {sorted(names)}")


@dataclass(frozen=True)
class LMConfig:
    """The decoder-only language model (Llama-style; `head_dim`/`qk_norm` cover Emu3.5)."""

    vocab_size: int = 184622
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int | None = None  # None: hidden_size // num_heads
    qk_norm: bool = False
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 9216
    dropout: float = 0.1  # the official `attention_dropout`: embedding, attention-prob, residual
    image_area: int = 518400
    pad_token_id: int = 151643

    def __post_init__(self) -> None:
        _check_numbers(self, ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                              "num_kv_heads", "max_position_embeddings", "image_area"), ("pad_token_id",),
                       ("rope_theta", "rms_norm_eps"), ("dropout",))
        if self.head_dim is not None:
            _check_numbers(self, ("head_dim",))
        if self.pad_token_id >= self.vocab_size:
            raise ValueError(f"pad_token_id {self.pad_token_id} is outside the vocabulary of {self.vocab_size} tokens")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.head_size % 2:
            raise ValueError(f"head_dim {self.head_size} must be even for rotary embeddings")

    @property
    def head_size(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LMConfig":
        _reject_unknown(cls, data)
        return cls(**data)

    @classmethod
    def from_official(cls, data: dict[str, Any]) -> "LMConfig":
        """From an original `config.json` (model_type "Emu3") or a -hf `text_config`."""
        data = dict(data)
        rope = data.pop("rope_parameters", None) or {}
        renames = {
            "num_hidden_layers": "num_layers",
            "num_attention_heads": "num_heads",
            "num_key_value_heads": "num_kv_heads",
            "attention_dropout": "dropout",
        }
        out: dict[str, Any] = {}
        if "rope_theta" in rope:
            out["rope_theta"] = float(rope["rope_theta"])
        scaling = data.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
        if scaling:
            raise ValueError(f"rope scaling {scaling} is not supported (no released Emu3 checkpoint uses it)")
        if data.get("pretraining_tp", 1) != 1:
            warnings.warn("pretraining_tp != 1 is numerically identical to 1 and is ignored", stacklevel=2)
        if data.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act {data['hidden_act']!r} is not supported (Emu3 uses silu)")
        if data.get("tie_word_embeddings", False):
            raise ValueError("tied word embeddings are not supported (Emu3's head is untied)")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = []
        for key, value in data.items():
            key = renames.get(key, key)
            if key in names:
                out[key] = value
            elif key in _IGNORED_OFFICIAL_KEYS or key.endswith("_token_id") or key.endswith("_token"):
                continue
            else:
                unknown.append(key)
        if unknown:
            warnings.warn(f"ignoring unknown language-model config keys {sorted(unknown)}", stacklevel=2)
        if "use_qk_norm" in data:
            out["qk_norm"] = bool(data["use_qk_norm"])
        try:
            return cls(**out)
        except ValueError as exc:  # name the field as the file spells it
            message = str(exc)
            for official, ours in renames.items():
                if official in data:
                    message = re.sub(rf"\b{ours}\b", f"{official}", message)
            raise ValueError(message) from None


def _normalise_conv_fields(cfg: Any) -> None:
    """Shared checks of the convolutional tokenizer configs: list fields become tuples, GroupNorm fits."""
    for name in ("ch_mult", "attn_resolutions"):
        value = getattr(cfg, name)
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0 for v in value):
            raise ValueError(f"{name} must be a list of positive integers, got {value!r}")
        object.__setattr__(cfg, name, tuple(value))
    _check_numbers(cfg, ("codebook_size", "embed_dim", "z_channels", "in_channels", "out_channels", "ch",
                         "num_res_blocks"), fractions=("dropout",))
    if cfg.ch % 32:
        raise ValueError(f"ch {cfg.ch} must be a multiple of 32 (GroupNorm with 32 groups)")


@dataclass(frozen=True)
class VQConfig:
    """The Emu3 vision tokenizer (MoVQ-style VQ autoencoder with causal temporal convolutions)."""

    codebook_size: int = 32768
    embed_dim: int = 4
    z_channels: int = 4
    in_channels: int = 3
    out_channels: int = 3
    temporal_downsample_factor: int = 4
    ch: int = 256
    ch_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (3,)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _normalise_conv_fields(self)
        _check_numbers(self, ("temporal_downsample_factor",))
        if self.temporal_downsample_factor & (self.temporal_downsample_factor - 1):
            raise ValueError(f"temporal_downsample_factor {self.temporal_downsample_factor} must be a power of 2")

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VQConfig":
        _reject_unknown(cls, data)
        return cls(**data)

    @classmethod
    def from_official(cls, data: dict[str, Any]) -> "VQConfig":
        """From an original `config.json` (model_type "Emu3VisionVQ") or a -hf `vq_config`."""
        renames = {
            "latent_channels": "z_channels",
            "base_channels": "ch",
            "channel_multiplier": "ch_mult",
        }
        names = {f.name for f in dataclasses.fields(cls)}
        hf_only = {"hidden_size", "num_attention_heads", "attention_dropout", "double_latent", "double_z"}
        out: dict[str, Any] = {}
        unknown = []
        for key, value in data.items():
            key = renames.get(key, key)
            if key in names:
                out[key] = value
            elif key in hf_only or key in _IGNORED_OFFICIAL_KEYS:
                continue
            else:
                unknown.append(key)
        if data.get("double_z") or data.get("double_latent"):
            raise ValueError("double_z is not supported (the Emu3 tokenizer uses a single latent)")
        if unknown:
            warnings.warn(f"ignoring unknown vision-tokenizer config keys {sorted(unknown)}", stacklevel=2)
        return cls(**out)


@dataclass(frozen=True)
class IBQConfig:
    """The Emu3.5 vision tokenizer (IBQ: a 2-D taming-VQGAN autoencoder with a dot-product codebook).

    `attn_resolutions` are feature-map sizes relative to the nominal input `resolution`: a level
    whose size `resolution / 2**level` is listed gets attention blocks, whatever the real input size.
    """

    codebook_size: int = 131072
    embed_dim: int = 256
    z_channels: int = 256
    in_channels: int = 3
    out_channels: int = 3
    ch: int = 256
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 4
    attn_resolutions: tuple[int, ...] = (16,)
    resolution: int = 256
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _normalise_conv_fields(self)
        _check_numbers(self, ("resolution",))
        if not self.ch_mult:
            raise ValueError("ch_mult must name at least one level")

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def level_has_attention(self, level: int) -> bool:
        return self.resolution // 2**level in self.attn_resolutions

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "IBQConfig":
        _reject_unknown(cls, data)
        return cls(**data)

    @classmethod
    def from_official(cls, data: dict[str, Any]) -> "IBQConfig":
        """From the official `config.yaml`: the `IBQ(ddconfig, n_embed, embed_dim, ...)` arguments."""
        if not isinstance(data, dict) or not isinstance(data.get("ddconfig"), dict):
            raise ValueError("an IBQ config needs a `ddconfig` mapping (the official config.yaml layout)")
        dd = dict(data["ddconfig"])
        if dd.pop("double_z", False):
            raise ValueError("double_z is not supported (the IBQ encoder output feeds quant_conv directly)")
        renames = {"out_ch": "out_channels"}
        names = {f.name for f in dataclasses.fields(cls)}
        out: dict[str, Any] = {}
        unknown = []
        for key, value in dd.items():
            key = renames.get(key, key)
            if key in names:
                out[key] = value
            else:
                unknown.append(f"ddconfig.{key}")
        for key, value in data.items():
            if key == "n_embed":
                out["codebook_size"] = value
            elif key == "embed_dim":
                out["embed_dim"] = value
            elif key not in _IBQ_TRAINING_KEYS and key != "ddconfig":
                unknown.append(key)
        if data.get("l2_normalize"):
            raise ValueError("l2_normalize is not supported (the released quantizer uses the plain dot product)")
        if unknown:
            warnings.warn(f"ignoring unknown IBQ config keys {sorted(unknown)}", stacklevel=2)
        return cls(**out)


# Arguments of the official IBQ constructor that only shape the training losses.
_IBQ_TRAINING_KEYS = frozenset(
    {"beta", "use_entropy_loss", "cosine_similarity", "entropy_temperature", "sample_minimization_weight",
     "batch_maximization_weight", "l2_normalize", "lossconfig", "ckpt_path", "ignore_keys", "image_key",
     "monitor", "learning_rate"}
)


LM_PRESETS: dict[str, LMConfig] = {
    "emu3-8b": LMConfig(),
    "emu3-8b-chat": LMConfig(max_position_embeddings=131072, image_area=262144),
    # Small sizes with the real vocabulary, for tests and benchmarks on a CPU.
    "tiny": LMConfig(hidden_size=32, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2,
                     max_position_embeddings=1024, dropout=0.0, image_area=4096),
    "small": LMConfig(hidden_size=256, intermediate_size=768, num_layers=4, num_heads=8, num_kv_heads=2,
                      max_position_embeddings=4096, dropout=0.0, image_area=16384),
    # Emu3.5 (34.1B; Emu3.5 and Emu3.5-Image share it): Qwen3-32B shapes, q/k norms, head_dim 128 with
    # a query width (8192) wider than the hidden size. eps and context follow Qwen3 and the paper.
    "emu3.5-34b": LMConfig(vocab_size=282926, hidden_size=5120, intermediate_size=25600, num_layers=64,
                           num_heads=64, num_kv_heads=8, head_dim=128, qk_norm=True, rms_norm_eps=1e-6,
                           max_position_embeddings=32768, image_area=1048576),
    "emu3.5-tiny": LMConfig(vocab_size=282926, hidden_size=32, intermediate_size=96, num_layers=2, num_heads=2,
                            num_kv_heads=1, head_dim=32, qk_norm=True, rms_norm_eps=1e-6,
                            max_position_embeddings=4096, dropout=0.0, image_area=16384),
}

VQ_PRESETS: dict[str, VQConfig] = {
    "emu3-vq": VQConfig(),
    "tiny": VQConfig(ch=32, num_res_blocks=1),
    # The bundled Shapes-world tokenizer: 64x64 images -> 8x8 grids of 1024 codes of dimension 8.
    "shapes": VQConfig(ch=32, num_res_blocks=1, codebook_size=1024, embed_dim=8, z_channels=8),
}

IBQ_PRESETS: dict[str, IBQConfig] = {
    # BAAI/Emu3.5-VisionTokenizer: 16x downsampling, 131072 codes of dimension 256 (455M parameters).
    "emu3.5-ibq": IBQConfig(),
    "tiny": IBQConfig(ch=32, num_res_blocks=1, attn_resolutions=(4,), resolution=64, z_channels=8, embed_dim=8),
}


def _preset(table: dict[str, Any], name: str, what: str) -> Any:
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {what} preset {name!r}; choose one of {sorted(table)}") from None


def lm_preset(name: str, **overrides: Any) -> LMConfig:
    """A named language-model preset, optionally with some fields replaced."""
    base = _preset(LM_PRESETS, name, "language-model")
    _reject_unknown(LMConfig, overrides)
    return dataclasses.replace(base, **overrides)


def vq_preset(name: str, **overrides: Any) -> VQConfig:
    """A named vision-tokenizer preset, optionally with some fields replaced."""
    base = _preset(VQ_PRESETS, name, "vision-tokenizer")
    _reject_unknown(VQConfig, overrides)
    return dataclasses.replace(base, **overrides)


def ibq_preset(name: str, **overrides: Any) -> IBQConfig:
    """A named Emu3.5 vision-tokenizer (IBQ) preset, optionally with some fields replaced."""
    base = _preset(IBQ_PRESETS, name, "IBQ vision-tokenizer")
    _reject_unknown(IBQConfig, overrides)
    return dataclasses.replace(base, **overrides)


__all__ = ["LMConfig", "VQConfig", "IBQConfig", "LM_PRESETS", "VQ_PRESETS", "IBQ_PRESETS", "lm_preset",
           "vq_preset", "ibq_preset"]

"""Find, read and write Emu3 checkpoints in the official formats, from local folders.

Two layouts are understood (spec section 9):
- original: an LM folder (`config.json` with model_type "Emu3", safetensors, sharded with an
  index or not, tokenizer files) and a separate vision-tokenizer folder (model_type "Emu3VisionVQ");
- transformers "-hf": one folder whose `config.json` has `text_config` + `vq_config` and whose
  tensors use the `text_model.*` / `vqmodel.*` names (mapped through `emu3.keymap`).
Emu3.5 (emu35_spec section 1) ships an LM folder of the original layout (model_type "Emu3" too)
and an IBQ vision-tokenizer folder (`config.yaml` + `model.ckpt`, a torch pickle of tensors);
`detect_family` tells the two families apart from the files alone.
Models are built on the meta device and their tensors assigned: safetensors are read directly and
`model.ckpt` only with `torch.load(weights_only=True)`, which refuses anything but tensors and plain
containers. Nothing is allocated twice. Every failure names the file and the problem.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from emu3.config import IBQConfig, LMConfig, VQConfig
from emu3.model.meta import build_on_meta
from emu3.model.transformer import Transformer
from emu3.quantize import check_mode, quantize_lm
from emu3.train import atomic
from emu3.vocab import EMU3, EMU35

CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
INDEX = "model.safetensors.index.json"
PREPROCESSOR = "preprocessor_config.json"
CODE_ALIASES = "code_aliases.json"  # ours, optional: codes of a vision tokenizer that encode as one (code_merge)
CODE_ALIASES_FORMAT = "emu3-code-aliases/1"
VQ_MODEL_TYPE = "Emu3VisionVQ"
HF_MODEL_TYPE, HF_PARTS = "emu3", ("text_config", "vq_config")  # a -hf config.json: the LM's and the VQ's configs
IBQ_CONFIG = "config.yaml"
IBQ_WEIGHTS = "model.ckpt"
EMU3_FAMILY, EMU35_FAMILY = "emu3", "emu3.5"
HUB_TIMEOUT = 10.0  # seconds the hub may take to answer about a hub id


class CheckpointError(ValueError):
    """A checkpoint folder or file is missing, corrupt or does not fit the model."""


def resolve(path: str | os.PathLike) -> Path:
    """A local folder, or a hub id resolved with `huggingface_hub` when it is installed (see `_hub_snapshot`)."""
    folder = Path(path).expanduser()
    if folder.is_dir():
        return folder
    text = str(path)
    if folder.exists():
        raise CheckpointError(f"{folder} is a file; expected a checkpoint folder")
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        return _hub_snapshot(text)
    raise CheckpointError(f"checkpoint folder {folder} does not exist")


@functools.cache
def _hub_snapshot(repo_id: str) -> Path:
    """The snapshot folder of a hub id: the cached one when there is one (no network), else downloaded.

    The hub is first asked about the id with a timeout of HUB_TIMEOUT seconds, so a stalled network
    fails instead of hanging; downloads then use huggingface_hub's own timeouts. Each id is resolved
    once per process."""
    try:
        from huggingface_hub import HfApi, snapshot_download
    except ImportError:
        raise CheckpointError(f"{repo_id!r} is not a local folder, and huggingface_hub (to fetch it as a "
                              "hub id) is not installed") from None
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (FileNotFoundError, ValueError):  # not cached, or not a valid id (the hub call below says which)
        pass
    try:
        HfApi().repo_info(repo_id, timeout=HUB_TIMEOUT)
        return Path(snapshot_download(repo_id, etag_timeout=HUB_TIMEOUT))
    except Exception as exc:  # offline, stalled, unknown repo, ...: say so plainly
        raise CheckpointError(f"{repo_id!r} is not a local folder nor in the hub cache, and could not be fetched "
                              f"from the hub (waiting at most {HUB_TIMEOUT:g} s for an answer): {exc}") from exc


def read_config(folder: Path) -> dict:
    path = folder / CONFIG
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a model config: expected a JSON object, got {type(data).__name__}")
    absent = [part for part in HF_PARTS if part not in data]
    if len(absent) == 1 or (absent and data.get("model_type") == HF_MODEL_TYPE):
        raise CheckpointError(f"{path} is an incomplete -hf config: it needs {' and '.join(HF_PARTS)}, "
                              f"and {' and '.join(absent)} {'is' if len(absent) == 1 else 'are'} missing")
    return data


def _config_from(cls, data, path: Path, section: str | None = None):
    """`cls.from_official(data)`, with any invalid field reported as a CheckpointError naming `path`."""
    where = f"{path} ({section})" if section else str(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: expected a JSON object, got {type(data).__name__}")
    try:
        return cls.from_official(data)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: {exc}") from exc


def is_hf_format(config: dict) -> bool:
    return all(part in config for part in HF_PARTS)


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a folder: from the shard index, the single file, or a glob."""
    index = folder / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            if not isinstance(weight_map, dict) or not all(isinstance(s, str) and s for s in weight_map.values()):
                raise TypeError("weight_map must map tensor names to shard file names")
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index} is not a valid shard index: {exc}") from exc
        files = [folder / s for s in shards]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"shards listed in {index} are missing: {missing}")
        return files
    if (folder / SAFETENSORS).is_file():
        return [folder / SAFETENSORS]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        found = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt*"))
        hint = f" (found {found}: pickled weights are not loaded; convert them to safetensors)" if found else ""
        raise CheckpointError(f"no safetensors weights in {folder}{hint}")
    return files


def read_tensors(files: list[Path], rename: Callable[[str], str | None] = lambda k: k,
                 device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of `files`, keyed by `rename(key)`; keys renamed to None are skipped."""
    out: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                for key in f.keys():
                    name = rename(key)
                    if name is not None:
                        out[name] = f.get_tensor(key)
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"cannot read {path}: {exc}") from exc
    return out


def assign_state_dict(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str,
                      dtype: torch.dtype | None, device: str | torch.device) -> None:
    """Check keys, shapes and dtype kinds against `model` (on the meta device), then assign cast tensors."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{source} does not match the model: {len(missing)} missing keys "
                              f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}")
    for key, ref in expected.items():
        if tuple(tensors[key].shape) != tuple(ref.shape):
            raise CheckpointError(f"{source}: {key} has shape {tuple(tensors[key].shape)}, "
                                  f"the config implies {tuple(ref.shape)}")
        if tensors[key].is_floating_point() != ref.is_floating_point():
            kind = "a floating-point" if ref.is_floating_point() else f"a {ref.dtype}"
            raise CheckpointError(f"{source}: {key} has dtype {tensors[key].dtype}, the model needs {kind} tensor")
    cast = {}
    for key, t in tensors.items():
        floating = t.is_floating_point() and dtype is not None
        cast[key] = t.to(device=device, dtype=dtype if floating else t.dtype)
    model.load_state_dict(cast, strict=True, assign=True)


def load_lm(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
            quantize: str | None = None) -> Transformer:
    """The language model of an original LM folder or of a -hf folder, in eval mode.

    `quantize` ("int8" or "fp8") stores its linear weights quantized (see `emu3.quantize`); a mode the
    device cannot run is refused before any weight is read."""
    if quantize is not None:
        check_mode(quantize, device)
    folder = resolve(path)
    config = read_config(folder)
    if is_hf_format(config):
        cfg = _config_from(LMConfig, config["text_config"], folder / CONFIG, "text_config")

        def rename(key: str) -> str | None:
            from emu3 import keymap

            return keymap.hf_to_original(key) if _is_hf_lm_key(key) else None
    else:
        model_type = config.get("model_type")
        if model_type == VQ_MODEL_TYPE:
            raise CheckpointError(f"{folder} holds a vision tokenizer, not a language model")
        if model_type not in ("Emu3", None):
            raise CheckpointError(f"{folder / CONFIG}: model_type {model_type!r} is not an Emu3 language model")
        cfg = _config_from(LMConfig, config, folder / CONFIG)
        rename = _identity
    files = weight_files(folder)
    tensors = read_tensors(files, rename)
    if not is_hf_format(config) and _lm_family(config, tensors) == EMU35_FAMILY:
        cfg = dataclasses.replace(cfg, qk_norm=True)  # Emu3.5's per-head q/k norms: required, never inferred
    with build_on_meta():
        model = Transformer(cfg)
    assign_state_dict(model, tensors, str(files[0] if len(files) == 1 else folder), dtype, device)
    if quantize is not None:
        quantize_lm(model, quantize)
    return model.eval()


def _identity(key: str) -> str:
    return key


def _is_hf_lm_key(key: str) -> bool:
    return key.startswith(("text_model.", "model.text_model.", "lm_head."))


def save_lm(model: Transformer, folder: str | os.PathLike, *, extra_config: dict | None = None) -> Path:
    """Write `model` in the original format (config.json + model.safetensors), atomically per file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    config = {
        "model_type": "Emu3", "architectures": ["Emu3ForCausalLM"],
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
        "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.rms_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings, "attention_dropout": cfg.dropout,
        "image_area": cfg.image_area, "pad_token_id": cfg.pad_token_id, "hidden_act": "silu",
        "tie_word_embeddings": False, **(extra_config or {}),
    }
    if cfg.head_dim is not None:
        config["head_dim"] = cfg.head_dim
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic.write_file(folder / SAFETENSORS, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    atomic.write_file(folder / CONFIG, lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
    return folder


def _siblings(lm_folder: Path) -> list[Path]:
    """The folders beside an LM folder, where its vision tokenizer is looked for. A hub snapshot's
    siblings are other revisions of the same repository, so a hub id's vision tokenizer must be given."""
    if lm_folder.parent.name == "snapshots" and lm_folder.parent.parent.name.startswith("models--"):
        raise CheckpointError(f"{lm_folder} is a hub snapshot, whose vision tokenizer is another hub repository: "
                              "--vision-tokenizer is required (a folder or a hub id)")
    return sorted(p for p in lm_folder.parent.iterdir() if p.is_dir())


def find_vision_tokenizer(lm_folder: Path) -> Path:
    """The vision tokenizer for an LM folder: itself if -hf, else its one sibling folder of type
    Emu3VisionVQ. Several such siblings are refused rather than one picked by name."""
    if is_hf_format(read_config(lm_folder)):
        return lm_folder
    found = [sibling for sibling in _siblings(lm_folder) if _is_vision_tokenizer(sibling)]
    if len(found) > 1:
        raise CheckpointError(f"{len(found)} vision tokenizers next to {lm_folder} ({', '.join(p.name for p in found)}); "
                              "pass the one that belongs to it (--vision-tokenizer DIR)")
    if not found:
        raise CheckpointError(f"no vision tokenizer found next to {lm_folder}; pass its folder explicitly "
                              "(--vision-tokenizer DIR)")
    return found[0]


def _is_vision_tokenizer(folder: Path) -> bool:
    """Whether `folder` holds a config of an original-layout Emu3 vision tokenizer."""
    if not (folder / CONFIG).is_file():
        return False
    try:
        return read_config(folder).get("model_type") == VQ_MODEL_TYPE
    except CheckpointError:  # a neighbour that is not a checkpoint of ours
        return False


def load_vision_tokenizer(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
                          device: str | torch.device = "cpu"):
    """(VisionTokenizer, ImageProcessor) from an original tokenizer folder or a -hf folder."""
    from emu3 import keymap
    from emu3.vision import ImageProcessor, VisionTokenizer

    folder = resolve(path)
    if is_ibq_folder(folder):
        raise CheckpointError(f"{folder} is an Emu3.5 (IBQ) vision tokenizer; an Emu3 one is needed here "
                              f"(a {CONFIG} of model_type {VQ_MODEL_TYPE}, or a -hf folder)")
    config = read_config(folder)
    if is_hf_format(config):
        cfg = _config_from(VQConfig, config["vq_config"], folder / CONFIG, "vq_config")

        def rename(key: str) -> str | None:
            return keymap.hf_to_original(key) if "vqmodel." in key else None
        convert = keymap.hf_tensor_to_original
    else:
        if config.get("model_type") not in (VQ_MODEL_TYPE, None):
            raise CheckpointError(f"{folder / CONFIG}: model_type {config.get('model_type')!r} is not "
                                  f"a vision tokenizer ({VQ_MODEL_TYPE})")
        cfg = _config_from(VQConfig, config, folder / CONFIG)
        rename, convert = _identity, None
    tensors = read_tensors(weight_files(folder), rename)
    if convert is not None:
        tensors = {k: convert(k, t) for k, t in tensors.items()}
    with build_on_meta():
        model = VisionTokenizer(cfg)
    assign_state_dict(model, tensors, str(folder), dtype, device)
    model.quantize.set_aliases(read_code_aliases(folder, cfg.codebook_size))
    processor_file = folder / PREPROCESSOR
    try:
        processor = ImageProcessor.from_file(processor_file) if processor_file.is_file() else ImageProcessor()
    except (TypeError, ValueError) as exc:
        message = str(exc) if str(processor_file) in str(exc) else f"{processor_file}: {exc}"
        raise CheckpointError(message) from exc
    return model.eval(), processor


def read_code_aliases(folder: Path, codebook_size: int) -> torch.Tensor | None:
    """The (K,) code -> canonical code table of `folder`'s `code_aliases.json`, or None without one.

    The file lists groups, each a canonical code followed by the codes that encode as it."""
    path = folder / CODE_ALIASES
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        groups = data["groups"]
        if data.get("format") != CODE_ALIASES_FORMAT or not all(isinstance(g, list) and g for g in groups):
            raise ValueError(f"expected format {CODE_ALIASES_FORMAT} with non-empty groups")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: not a code alias table ({exc})") from None
    table = torch.arange(codebook_size)
    seen: set[int] = set()
    for group in groups:
        if not all(isinstance(c, int) and 0 <= c < codebook_size for c in group) or seen & set(group):
            raise CheckpointError(f"{path}: group {group[:8]} has codes outside [0, {codebook_size}) or "
                                  "codes of another group")
        seen |= set(group)
        table[group] = group[0]
    return table


def code_alias_groups(table: torch.Tensor) -> list[list[int]]:
    """The groups (canonical code first) of a code -> canonical code table, for `code_aliases.json`."""
    groups: dict[int, list[int]] = {}
    for code, canonical in enumerate(table.tolist()):
        if code != canonical:
            groups.setdefault(canonical, [canonical]).append(code)
    return list(groups.values())


def is_ibq_folder(folder: Path) -> bool:
    return (folder / IBQ_CONFIG).is_file() and (folder / IBQ_WEIGHTS).is_file()


def detect_family(path: str | os.PathLike) -> str:
    """"emu3" or "emu3.5" for an LM or vision-tokenizer folder, from its files alone.

    An IBQ folder is Emu3.5's; a -hf folder or a MoVQ folder is Emu3's. Both families' LM folders
    say model_type "Emu3": the vocabulary size decides (184622 vs 282926), and for any other size
    the presence of the per-head q/k norms that only Emu3.5 has (read from the weight headers).
    """
    folder = resolve(path)
    if is_ibq_folder(folder):
        return EMU35_FAMILY
    config = read_config(folder)
    if is_hf_format(config) or config.get("model_type") == VQ_MODEL_TYPE:
        return EMU3_FAMILY
    return _lm_family(config, _weight_keys(folder))


def _lm_family(config: dict, keys: Iterable[str]) -> str:
    """The family of an original-layout LM: by vocabulary size, else by the tensor names (`keys`, read
    only when the size does not decide)."""
    sizes = {EMU3.size: EMU3_FAMILY, EMU35.size: EMU35_FAMILY}
    if config.get("vocab_size") in sizes:
        return sizes[config["vocab_size"]]
    return EMU35_FAMILY if any(k.endswith("self_attn.q_norm.weight") for k in keys) else EMU3_FAMILY


def _weight_keys(folder: Path) -> Iterator[str]:
    """The tensor names of a folder's safetensors files, from their headers."""
    for path in weight_files(folder):
        try:
            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"cannot read {path}: {exc}") from exc
        yield from keys


def read_ibq_config(folder: Path) -> IBQConfig:
    """The IBQConfig of an official `config.yaml` (parsed with PyYAML's safe loader)."""
    import yaml

    path = folder / IBQ_CONFIG
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{path} is not valid YAML: {exc}") from exc
    try:
        return IBQConfig.from_official(data)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def read_ibq_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The model tensors of an official `model.ckpt` (`{"state_dict": ...}` or a bare dict).

    Only `torch.load(weights_only=True)` touches the file. Keys of the training losses
    (`loss.*`: discriminator, LPIPS) are dropped; every other key must fit the model.
    """
    import pickle

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as exc:
        raise CheckpointError(f"{path} is not a checkpoint of plain tensors (loaded with weights_only=True): "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors (expected {{'state_dict': {{name: tensor}}}})")
    return {k: t for k, t in state.items() if not k.startswith("loss.")}


def load_ibq(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """The Emu3.5 IBQ vision tokenizer of a folder holding `config.yaml` + `model.ckpt`, in eval mode."""
    from emu3.vision.ibq import IBQ

    folder = resolve(path)
    if not (folder / IBQ_CONFIG).is_file():
        raise CheckpointError(f"{folder} is not an Emu3.5 vision tokenizer: {IBQ_CONFIG} is missing")
    cfg = read_ibq_config(folder)
    tensors = read_ibq_tensors(folder / IBQ_WEIGHTS)
    with build_on_meta():
        model = IBQ(cfg)
    assign_state_dict(model, tensors, str(folder / IBQ_WEIGHTS), dtype, device)
    return model.eval()


def find_ibq(lm_folder: Path) -> Path:
    """The IBQ vision tokenizer beside an Emu3.5 LM folder (a sibling with config.yaml + model.ckpt)."""
    for sibling in _siblings(lm_folder):
        if is_ibq_folder(sibling):
            return sibling
    raise CheckpointError(f"no Emu3.5 vision tokenizer (a folder with {IBQ_CONFIG} and {IBQ_WEIGHTS}) found next "
                          f"to {lm_folder}; pass its folder explicitly (--vision-tokenizer DIR)")

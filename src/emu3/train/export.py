"""Exported models in the official folder layouts, loadable by `emu3 generate/chat/reconstruct`.

`export_lm` writes `DEST/model/` (config.json + model.safetensors in the original Emu3 layout, LoRA
adapters merged, the text-tokenizer files copied from the base) and `DEST/vision-tokenizer/` beside
it (a link to the vision tokenizer the data was prepared with, or an original-layout copy when that
one is a -hf folder), so `checkpoint.find_vision_tokenizer` finds it. A tokenizer already at
`DEST/vision-tokenizer` stays as it is; a destination that would replace a folder the export reads
(the base model, its tokenizers) is refused before anything is written. `save_vision_tokenizer` writes
the official VQ layout (config.json with model_type "Emu3VisionVQ", model.safetensors,
preprocessor_config.json). Both write through staging folders. This module does not train.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from emu3 import checkpoint
from emu3.config import LMConfig, VQConfig
from emu3.model import Transformer
from emu3.model.meta import build_on_meta
from emu3.train import atomic
from emu3.train.deepen import identity_blocks
from emu3.train.lora import merge_lora
from emu3.vision import ImageProcessor

TOKENIZER_FILES = ("emu3.tiktoken", "emu3_vision_tokens.txt", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "tokenizer.json", "special_tokens_map.json", "generation_config.json", "vocab_map.json")
LM_DIR, VQ_DIR = "model", "vision-tokenizer"
# A vision tokenizer's decoder side: what `--decoder-only` trains and what its export dtype applies to.
VQ_DECODER_SIDE = ("post_quant_conv.", "decoder.")
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}
VQ_CODEBOOK = "quantize."
# What `save_vision_tokenizer` writes.
VQ_FILES = (checkpoint.SAFETENSORS, checkpoint.CONFIG, checkpoint.PREPROCESSOR, checkpoint.CODE_ALIASES)


def _entry(target: Path) -> Path:
    """The absolute path a write to `target` replaces: a link there itself, not the folder it points to."""
    return target.parent.resolve() / target.name


def refuse_overwrite(target: Path, sources: list[Path | None]) -> None:
    """Raise ValueError when writing the folder `target` would replace one of `sources` (or a folder holding one)."""
    entry = _entry(target)
    for source in filter(None, sources):
        if entry == source.resolve() or entry in source.resolve().parents:
            raise ValueError(f"exporting to {target} would overwrite {source}, which the export reads: "
                             "choose another output folder")


def check_vision_tokenizer_output(folder: Path, sources: list[Path | None]) -> None:
    """Refuse `folder` as the output of `save_vision_tokenizer`, which replaces the whole folder, when it
    would replace one of `sources` or holds files other than a vision tokenizer's."""
    refuse_overwrite(folder, sources)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"-o {folder} exists and is not a folder")
    others = sorted(p.name for p in folder.iterdir() if p.name not in VQ_FILES) if folder.is_dir() else []
    if others:
        more = f" and {len(others) - 1} more" if len(others) > 1 else ""
        raise ValueError(f"-o {folder} holds files that are not a vision tokenizer's ({others[0]}{more}), and the "
                         "vision tokenizer replaces the whole folder: choose a new or empty folder")


def export_lm(state: dict[str, torch.Tensor], cfg: LMConfig, dest: Path, *, lora_scale: float | None,
              base: Path | None, tokenizer_dir: Path | None, vision_tokenizer: Path | None,
              dtype: str = "fp32") -> Path:
    """Write the LM (and link its vision tokenizer) under `dest`; returns the LM folder. `base` (the
    model trained), `tokenizer_dir` and `vision_tokenizer` are never overwritten."""
    refuse_overwrite(dest / LM_DIR, [base, tokenizer_dir, vision_tokenizer])
    if vision_tokenizer is not None:
        place_vision_tokenizer(vision_tokenizer, dest / VQ_DIR, keep=[base, tokenizer_dir])
    if lora_scale is not None:
        state = merge_lora(state, lora_scale)
    cast = DTYPES[dtype]
    state = {k: v.to(cast) if v.is_floating_point() else v for k, v in state.items()}
    with build_on_meta():
        model = Transformer(cfg)
    checkpoint.assign_state_dict(model, state, "the trained model", None, "cpu")
    with atomic.staged_dir(dest / LM_DIR) as tmp:
        checkpoint.save_lm(model, tmp)
        if tokenizer_dir is not None:
            for name in TOKENIZER_FILES:
                if (tokenizer_dir / name).is_file():
                    shutil.copy2(tokenizer_dir / name, tmp / name)
    return dest / LM_DIR


def place_vision_tokenizer(source: Path, target: Path, keep: list[Path | None]) -> None:
    """Link an original-layout tokenizer folder at `target`, or write an original-layout copy of a -hf one.
    An original-layout `source` that is `target` itself stays; `source` and `keep` are never overwritten."""
    source = source.resolve()
    hf = checkpoint.is_hf_format(checkpoint.read_config(source))
    if not hf and _entry(target) == source:
        return
    refuse_overwrite(target, [source, *keep])
    if hf:
        vq, processor = checkpoint.load_vision_tokenizer(source)
        save_vision_tokenizer(vq.state_dict(), vq.config, processor, target)
        return
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        shutil.rmtree(target)
    try:
        os.symlink(source, target, target_is_directory=True)
    except OSError:  # no symlinks on this filesystem: copy instead
        shutil.copytree(source, target)


def processor_config(processor: ImageProcessor) -> dict:
    """The official preprocessor_config.json contents for an `ImageProcessor`."""
    return {
        "image_processor_type": "Emu3VisionVQImageProcessor", "do_convert_rgb": True, "do_resize": True,
        "do_rescale": True, "do_normalize": True, "image_mean": list(processor.image_mean),
        "image_std": list(processor.image_std), "min_pixels": processor.min_pixels,
        "max_pixels": processor.max_pixels, "spatial_factor": processor.spatial_factor,
        "rescale_factor": processor.rescale_factor, "resample": processor.resample,
        "size": {"min_pixels": processor.min_pixels, "max_pixels": processor.max_pixels},
    }


def save_vision_tokenizer(state: dict[str, torch.Tensor], cfg: VQConfig, processor: ImageProcessor,
                          folder: Path, aliases: torch.Tensor | None = None, dtype: str = "fp32",
                          encoder_dtype: str = "fp32") -> Path:
    """Write a vision tokenizer in the official layout (loadable by `checkpoint.load_vision_tokenizer`),
    with `code_aliases.json` when `aliases` (a code -> canonical code table) is given. `dtype` is that
    of the decoder side (`post_quant_conv`, `decoder`). `encoder_dtype` is that of the encoder side:
    fp32 by default, since rounding it moves codes, and with them the meaning of data tokenized before
    and of a language model trained on it (of the Shapes tokenizer's codes, bf16 moves about 1 in 600
    and fp16 about 1 in 3000). The codebook stays fp32. Identity blocks (`identity_blocks`), whose
    weights cannot reach a code, take the narrower of the two (`dtype` when both are as wide)."""
    config = {"model_type": checkpoint.VQ_MODEL_TYPE, "architectures": ["Emu3VisionVQModel"], "double_z": False,
              **{k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}}

    identity = identity_blocks(state)
    narrowest = min(DTYPES[dtype], DTYPES[encoder_dtype], key=lambda d: d.itemsize)

    def stored(key: str, tensor: torch.Tensor) -> torch.Tensor:
        if not tensor.is_floating_point():
            return tensor.detach().contiguous()
        if key.startswith(identity):
            to = narrowest
        elif key.startswith(VQ_DECODER_SIDE):
            to = DTYPES[dtype]
        else:
            to = torch.float32 if key.startswith(VQ_CODEBOOK) else DTYPES[encoder_dtype]
        return tensor.detach().to(to).contiguous()

    tensors = {k: stored(k, v) for k, v in state.items()}
    with atomic.staged_dir(folder) as tmp:
        save_file(tensors, str(tmp / checkpoint.SAFETENSORS), metadata={"format": "pt"})
        (tmp / checkpoint.CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (tmp / checkpoint.PREPROCESSOR).write_text(json.dumps(processor_config(processor), indent=2) + "\n",
                                                   encoding="utf-8")
        if aliases is not None:
            groups = checkpoint.code_alias_groups(aliases)
            (tmp / checkpoint.CODE_ALIASES).write_text(
                json.dumps({"format": checkpoint.CODE_ALIASES_FORMAT, "groups": groups}) + "\n", encoding="utf-8")
    return folder

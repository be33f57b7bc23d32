"""Typed configurations of the training commands, read from defaults, a recipe file and flags.

`LoopConfig` holds what every training run shares (optimizer, schedule, batch, checkpoints, logging);
`SFTConfig` (language-model fine-tuning) and `VQTrainConfig` (vision tokenizer) extend it. The LM
defaults are the official Emu3 recipe (spec section 8.4): AdamW lr 1e-5 with 30 warmup steps and a
cosine decay to 1e-6, weight decay 0.1, betas (0.9, 0.95), eps 1e-6, clipping at 5.0, micro-batch 2 x
4 accumulation steps, 4 epochs, caption dropout 0.05, gradient checkpointing.

`load_config(cls, file, overrides)` layers dataclass defaults < a TOML/JSON recipe < explicit flags.
Unknown keys and values of the wrong type (a string for a number, a fraction for a count) raise,
naming them. Each field's `help` metadata is also its command-line help. This module does not parse
argv (see `train/cli.py`) and does not touch models or files beyond the recipe.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import tomllib

C = TypeVar("C")


def opt(default: Any, help: str) -> Any:
    """A dataclass field with a default and its command-line help."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class LoopConfig:
    """What every training run shares."""

    output: str = opt("", "output folder: checkpoints, logs and the exported model")
    lr: float = opt(1e-5, "peak learning rate")
    min_lr: float = opt(1e-6, "learning rate at the end of the cosine decay")
    warmup_steps: int = opt(30, "linear warmup steps (from 0)")
    weight_decay: float = opt(0.1, "AdamW weight decay (matrices only; norms and biases get none)")
    betas: tuple[float, float] = opt((0.9, 0.95), "AdamW betas")
    eps: float = opt(1e-6, "AdamW epsilon")
    max_grad_norm: float = opt(5.0, "clip the global gradient norm to this (0: no clipping)")
    micro_batch_size: int = opt(2, "examples per forward pass on each process")
    grad_accum: int = opt(4, "micro-batches accumulated per optimizer step")
    epochs: int = opt(4, "passes over the data (ignored when max_steps > 0)")
    max_steps: int = opt(0, "optimizer steps to run (0: epochs x steps per epoch)")
    save_every: int = opt(500, "write a checkpoint every N steps (and at the end)")
    keep_checkpoints: int = opt(10, "checkpoints kept on disk (the oldest are deleted)")
    save: bool = opt(True, "write checkpoints and the final export (off: benchmarks and dry runs)")
    log_every: int = opt(1, "write a log line every N steps")
    seed: int = opt(0, "seed for initialisation, data order, caption dropout and dropout")
    resume: bool = opt(False, "continue from the latest checkpoint in --output")
    device: str = opt("auto", "cpu, cuda (default: cuda:LOCAL_RANK if available)")
    dtype: str = opt("auto", "compute dtype under autocast: bf16 or fp32 (default: bf16 on GPU, fp32 on CPU)")
    tensorboard: bool = opt(False, "also log to TensorBoard (needs the tensorboard package)")
    quiet: bool = opt(False, "no progress bar")
    export_dtype: str = opt("fp32", "dtype of the exported model weights: fp32 or bf16 (a vision tokenizer's "
                                    "decoder side only: see --export-encoder-dtype)")

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        checks = [
            (bool(self.output), "output folder is required (--output DIR)"),
            (self.lr > 0 and 0 <= self.min_lr <= self.lr,
             f"need 0 <= min_lr <= lr and lr > 0, got {self.min_lr}, {self.lr}"),
            (self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
             f"betas must be two values in [0, 1), got {self.betas}"),
            (self.eps > 0, f"eps must be > 0, got {self.eps}"),
            (self.max_grad_norm >= 0, f"max_grad_norm must be >= 0, got {self.max_grad_norm}"),
            (self.micro_batch_size >= 1, f"micro_batch_size must be >= 1, got {self.micro_batch_size}"),
            (self.grad_accum >= 1, f"grad_accum must be >= 1, got {self.grad_accum}"),
            (self.epochs >= 1 or self.max_steps >= 1, "need epochs >= 1 or max_steps >= 1"),
            (self.max_steps >= 0, f"max_steps must be >= 0, got {self.max_steps}"),
            (self.save_every >= 1, f"save_every must be >= 1, got {self.save_every}"),
            (self.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}"),
            (self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}"),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            (self.dtype in ("auto", "bf16", "bfloat16", "fp32", "float32"),
             f"dtype must be auto, bf16 or fp32, got {self.dtype!r}"),
            (self.export_dtype in ("fp32", "float32", "bf16", "bfloat16"),
             f"export_dtype must be fp32 or bf16, got {self.export_dtype!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SFTConfig(LoopConfig):
    """Supervised fine-tuning (or training from scratch) of the language model."""

    data: list[str] = opt([], "prepared data folder (emu3 prepare); repeat for a mixture, DIR:WEIGHT to weight one")
    model: str | None = opt(None, "base language-model folder (original or -hf layout)")
    preset: str | None = opt(None, "build the model from a preset instead (tiny, small, emu3-8b; needs --init)")
    init: bool = opt(False, "random initialisation (std 0.02) instead of the --model weights")
    add_layers: int = opt(0, "grow the loaded model by N decoder layers, each new one a copy of the layer before "
                             "it that starts as the identity (emu3.train.deepen): more capacity, same logits")
    vision_tokenizer: str | None = opt(None, "vision tokenizer to place beside the export (default: the data's)")
    null_prompt_prob: float = opt(0.05, "probability of dropping a caption (text-to-image/video), for guidance")
    max_seq_len: int = opt(0, "longest example kept, in tokens (0: the model's max_position_embeddings; "
                              "more raises the exported model's max_position_embeddings, as the official recipe)")
    bucket_window: int = opt(16, "sort examples by length within windows of N global batches (0: no bucketing)")
    gradient_checkpointing: bool = opt(True, "recompute each layer's activations in the backward pass")
    loss_chunk: int = opt(1024, "supervised positions per output-head chunk (bounds the fp32 logits' memory)")
    lora_rank: int = opt(0, "LoRA rank (0: full fine-tuning)")
    lora_alpha: float = opt(32.0, "LoRA scale numerator (scale = alpha / rank)")
    lora_dropout: float = opt(0.05, "dropout on the LoRA branch input")
    lora_targets: list[str] = opt(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                  "linear layers that get LoRA adapters")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.data = [self.data] if isinstance(self.data, str) else list(self.data)  # a recipe may name one
        self.lora_targets = [self.lora_targets] if isinstance(self.lora_targets, str) else list(self.lora_targets)
        if not self.data:
            raise ValueError("no training data: give --data DIR (a folder written by `emu3 prepare`)")
        if (self.model is None) == (self.preset is None):
            raise ValueError("give exactly one of --model DIR (fine-tune) or --preset NAME --init (from scratch)")
        if self.preset is not None and not self.init:
            raise ValueError(f"--preset {self.preset} has no weights: add --init to train it from scratch")
        if self.add_layers < 0 or (self.add_layers and (self.init or self.model is None or self.lora_rank)):
            raise ValueError(f"add_layers ({self.add_layers}) grows the weights of --model: it must be >= 0 and "
                             "excludes --init, --preset and LoRA")
        if not 0 <= self.null_prompt_prob < 1:
            raise ValueError(f"null_prompt_prob must be in [0, 1), got {self.null_prompt_prob}")
        if self.max_seq_len < 0 or self.bucket_window < 0 or self.loss_chunk < 1:
            raise ValueError("max_seq_len and bucket_window must be >= 0, loss_chunk >= 1")
        if self.lora_rank < 0 or not 0 <= self.lora_dropout < 1 or (self.lora_rank and not self.lora_targets):
            raise ValueError(f"bad LoRA settings: rank {self.lora_rank}, dropout {self.lora_dropout}, "
                             f"targets {self.lora_targets}")


@dataclass
class VQTrainConfig(LoopConfig):
    """Training or fine-tuning the vision tokenizer (VQ autoencoder)."""

    data: list[str] = opt([], "JSONL manifests of images / videos / frame lists (captions are ignored); "
                              "several are trained on as one set")
    vision_tokenizer: str | None = opt(None, "vision-tokenizer folder to fine-tune")
    preset: str | None = opt(None, "build the tokenizer from a preset instead (tiny, shapes, emu3-vq; needs --init)")
    init: bool = opt(False, "random initialisation instead of the --vision-tokenizer weights")
    add_res_blocks: int = opt(0, "grow the loaded tokenizer by N residual blocks per level, new blocks starting "
                                 "as the identity (emu3.train.deepen): with --decoder-only, a bigger decoder "
                                 "for the same codes")
    resolution: int = opt(256, "square training crop size in pixels (a multiple of the spatial factor)")
    crop: int = opt(0, "train on random square crops of this side cut from the --resolution square (cheaper "
                       "steps; the tokenizer is convolutional), a multiple of the spatial factor (0: no crop)")
    decoder_only: bool = opt(False, "train only post_quant_conv and the decoder: the encoder and codebook stay as "
                                    "loaded, so codes already computed with the tokenizer stay valid")
    autoencoder_steps: int = opt(0, "train the first N steps as a plain autoencoder (no quantization), then set "
                                    "the codebook by k-means on latents of the data (training from scratch)")
    num_frames: int = opt(1, "frames per sample: 1 (images) or a multiple of 4 (video clips)")
    recon_loss: str = opt("l1", "pixel reconstruction loss: l1 or l2")
    commitment_beta: float = opt(0.25, "weight of the commitment loss ||z - sg(zq)||^2")
    codebook_weight: float = opt(1.0, "weight of the codebook loss ||sg(z) - zq||^2")
    perceptual_weight: float = opt(0.0, "weight of an LPIPS term (needs the lpips package)")
    train_batchnorm: bool = opt(False, "update BatchNorm statistics (off: keep the checkpoint's; with "
                                "decoder_only, the decoder's only)")
    restart_dead_codes: int = opt(0, "move codes unused for this many micro-batches onto latents of the batch "
                                     "(against codebook collapse when training from scratch; 0: never)")
    lr: float = opt(1e-4, "peak learning rate")
    min_lr: float = opt(1e-5, "learning rate at the end of the cosine decay")
    warmup_steps: int = opt(100, "linear warmup steps (from 0)")
    weight_decay: float = opt(0.0, "AdamW weight decay (matrices only)")
    betas: tuple[float, float] = opt((0.5, 0.9), "AdamW betas")
    eps: float = opt(1e-8, "AdamW epsilon")
    max_grad_norm: float = opt(1.0, "clip the global gradient norm to this (0: no clipping)")
    micro_batch_size: int = opt(4, "samples per forward pass on each process")
    grad_accum: int = opt(1, "micro-batches accumulated per optimizer step")
    epochs: int = opt(1, "passes over the data (ignored when max_steps > 0)")
    export_encoder_dtype: str = opt("fp32", "dtype of the exported encoder: fp32 (the codes exactly as trained) or "
                                            "fp16 (half the size; moves a few codes in ten thousand); the codebook "
                                            "stays fp32")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.export_encoder_dtype not in ("fp32", "float32", "fp16", "float16"):
            raise ValueError(f"export_encoder_dtype must be fp32 or fp16, got {self.export_encoder_dtype!r}")
        self.data = [self.data] if isinstance(self.data, str) else list(self.data)  # a recipe may name one
        if not self.data or not all(self.data):
            raise ValueError("no training data: give --data MANIFEST.jsonl [MORE.jsonl ...]")
        if (self.vision_tokenizer is None) == (self.preset is None):
            raise ValueError("give exactly one of --vision-tokenizer DIR (fine-tune) or --preset NAME --init")
        if self.preset is not None and not self.init:
            raise ValueError(f"--preset {self.preset} has no weights: add --init to train it from scratch")
        if self.num_frames != 1 and (self.num_frames < 4 or self.num_frames % 4):
            raise ValueError(f"num_frames must be 1 or a multiple of 4, got {self.num_frames}")
        if self.recon_loss not in ("l1", "l2"):
            raise ValueError(f"recon_loss must be l1 or l2, got {self.recon_loss!r}")
        if min(self.commitment_beta, self.codebook_weight, self.perceptual_weight) < 0 or self.resolution < 8:
            raise ValueError("loss weights must be >= 0 and resolution >= 8")
        if self.crop < 0 or self.crop > self.resolution:
            raise ValueError(f"crop must be between 0 and resolution ({self.resolution}), got {self.crop}")
        if self.decoder_only and (self.init or self.autoencoder_steps or self.restart_dead_codes):
            raise ValueError("decoder_only keeps the loaded encoder and codebook: it excludes --init, "
                             "autoencoder_steps and restart_dead_codes")
        for name in ("autoencoder_steps", "restart_dead_codes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.add_res_blocks < 0 or (self.add_res_blocks and (self.init or self.vision_tokenizer is None)):
            raise ValueError(f"add_res_blocks ({self.add_res_blocks}) grows the weights of --vision-tokenizer: "
                             "it must be >= 0 and excludes --init and --preset")


@dataclass
class PrepareConfig:
    """Turning a JSONL manifest into pre-tokenized shards (`emu3 prepare`)."""

    manifest: str = opt("", "JSONL manifest (see emu3.train.manifest for the record shapes)")
    output: str = opt("", "output data folder")
    model: str = opt("", "language-model folder: its text tokenizer and config (image_area, context)")
    vision_tokenizer: str | None = opt(None, "vision-tokenizer folder (default: found beside --model)")
    image_area: int = opt(0, "rescale images to this pixel area first, as the official recipe (0: the model's)")
    max_seq_len: int = opt(0, "skip examples longer than this (0: the model's max_position_embeddings)")
    records_per_shard: int = opt(1000, "manifest records per shard file")
    video_mode: str = opt("clip", "clip: frames through the temporal tokenizer, one (t, h, w) block; "
                                  "frames: one image block per frame")
    max_frames: int = opt(16, "frames kept per video, after the stride")
    frame_stride: int = opt(1, "keep every N-th frame of a video")
    device: str = opt("auto", "device of the vision tokenizer")
    overwrite: bool = opt(False, "discard an existing data folder made with other settings (its dataset.json, "
                                 "shards and summary.json; other files stay)")
    quiet: bool = opt(False, "no progress bar")

    def __post_init__(self) -> None:
        if not self.manifest or not self.output or not self.model:
            raise ValueError("prepare needs a manifest, --output DIR and --model DIR")
        if self.video_mode not in ("clip", "frames"):
            raise ValueError(f"video_mode must be clip or frames, got {self.video_mode!r}")
        if min(self.records_per_shard, self.max_frames, self.frame_stride) < 1:
            raise ValueError("records_per_shard, max_frames and frame_stride must be >= 1")
        if min(self.image_area, self.max_seq_len) < 0:
            raise ValueError("image_area and max_seq_len must be >= 0 (0: the model's)")


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The key/value table of a TOML or JSON recipe file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read config file {path}: {exc}") from None
    try:
        data = json.loads(raw) if path.suffix.lower() == ".json" else tomllib.loads(raw.decode("utf-8-sig"))
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
        raise ValueError(f"config file {path} is not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a table of settings")
    return data


def _typed(name: str, value: Any, kind: Any, source: str) -> Any:
    """`value` checked against the field type `kind` (ints widen to floats; one string is a one-entry list)."""
    args = typing.get_args(kind)
    if type(None) in args:  # X | None
        if value is None:
            return None
        kind = next(t for t in args if t is not type(None))
    origin = typing.get_origin(kind)
    if origin in (list, tuple):
        items = [value] if origin is list and isinstance(value, str) else value
        if isinstance(items, (list, tuple)) and (origin is list or len(items) == len(typing.get_args(kind))):
            return origin(_typed(name, item, typing.get_args(kind)[0], source) for item in items)
    elif kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    want = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    if origin in (list, tuple):
        n = f"{len(typing.get_args(kind))} " if origin is tuple else ""
        expected = f"a list of {n}{'numbers' if typing.get_args(kind)[0] is float else 'strings'}"
    else:
        expected = want.get(kind, kind.__name__)
    raise ValueError(f"setting {name!r} in {source} must be {expected}, got {value!r}")


def load_config(cls: type[C], file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C:
    """`cls` from its defaults, then the recipe `file`, then `overrides` (explicit flags). A value of
    the wrong type (a string for a number, a fraction for a count) is refused, naming the setting."""
    kinds = {name: kind for name, kind in typing.get_type_hints(cls).items()
             if name in {f.name for f in dataclasses.fields(cls)}}
    values: dict[str, Any] = {}
    for source, table in ((str(file), read_recipe(file) if file else {}), ("flags", overrides or {})):
        table = {key.replace("-", "_"): value for key, value in table.items()}
        unknown = sorted(set(table) - set(kinds))
        if unknown:
            raise ValueError(f"unknown {cls.__name__} settings {unknown} in {source}; known: {sorted(kinds)}")
        values.update({key: _typed(key, value, kinds[key], source) for key, value in table.items()})
    return cls(**values)

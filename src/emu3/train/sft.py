"""`emu3 train`: supervised fine-tuning (or training from scratch) of the Emu3 language model.

The model comes from `--model DIR` (an official checkpoint; `--init` re-initialises it) or from a
preset (`--preset tiny --init`), optionally with LoRA adapters or grown by `--add-layers N` identity
layers (emu3.train.deepen). Data are folders written by
`emu3 prepare` (several make a weighted mixture of tasks); a folder tokenized with another tokenizer
than the base model's is refused. Each micro-batch is right-padded to its
longest sequence; the loss is the next-token cross-entropy on the supervised positions only, summed
and divided by the number of supervised tokens in the whole global batch. Only the supervised
positions go through the output head, in chunks that are recomputed in the backward pass, so the
fp32 logits of a 10k-token image (184622 columns) never exist at once. Caption dropout removes the
prompt span of an example (t2i/video) with probability `null_prompt_prob`. At the end the model is
exported in the original layout with the tokenizer files and the vision tokenizer beside it.
This module does not prepare data or parse argv.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.utils.checkpoint import checkpoint

from emu3 import checkpoint as ckpt
from emu3.compact_vocab import load_tokenizer
from emu3.config import LMConfig, lm_preset
from emu3.model import Transformer
from emu3.model.meta import build_on_meta
from emu3.train import distributed, export
from emu3.train.batching import Layout, MicroBatch, Plan
from emu3.train.config import SFTConfig
from emu3.train.deepen import deepen_lm, deepened_config
from emu3.train.loop import StepCallback, check_output, fit
from emu3.train.lora import add_lora
from emu3.train.prepare import lm_config, matches_tokenizer
from emu3.train.shards import DataError, Shard, open_folder, read_dataset_info


class LMLoss(nn.Module):
    """Wraps the LM so that one `forward` (the unit FSDP and autocast see) returns the summed loss."""

    def __init__(self, lm: Transformer, chunk: int) -> None:
        super().__init__()
        self.lm, self.chunk = lm, chunk

    def _chunk_loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.lm.logits(hidden), targets, reduction="sum")

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy of `targets` (B, T) where `weights` (B, T) is true, given `inputs` (B, T)."""
        hidden = self.lm.hidden(inputs)  # (B, T, C)
        picked, wanted = hidden[weights], targets[weights]  # (N, C), (N,)
        total = hidden.sum().float() * 0.0  # keeps every parameter in the graph even when N == 0
        for start in range(0, picked.shape[0], self.chunk):
            total = total + checkpoint(self._chunk_loss, picked[start:start + self.chunk],
                                       wanted[start:start + self.chunk], use_reentrant=False)
        return total


def _parse_data(entry: str) -> tuple[Path, float]:
    """"DIR" or "DIR:WEIGHT"."""
    path, sep, weight = entry.rpartition(":")
    if sep and path:
        try:
            value = float(weight)
        except ValueError:
            return Path(entry), 1.0
        if not (math.isfinite(value) and value > 0):
            raise DataError(f"--data {entry}: a mixture weight must be a positive number, got {weight}")
        return Path(path), value
    return Path(entry), 1.0


@dataclass
class LMData:
    """Examples of one or more prepared folders, addressed by one global index."""

    folders: list[tuple[Path, float]]
    infos: list[dict[str, Any]]
    shards: list[Shard]
    where: np.ndarray  # (n, 2): (shard, local index) of each global example
    lengths: np.ndarray
    loss_tokens: np.ndarray
    groups: list[np.ndarray]  # global indices per folder (examples that fit)
    skipped: dict[str, int]  # examples left out, by reason
    lost_tasks: list[str]  # tasks of the data none of whose examples is kept

    @classmethod
    def open(cls, entries: list[str], max_len: int, vocab_size: int) -> LMData:
        folders = [_parse_data(e) for e in entries]
        infos, shards, where, lengths, loss_tokens, groups = [], [], [], [], [], []
        too_long = unsupervised = count = 0
        tasks: dict[str, int] = {}  # task -> examples kept
        for path, _ in folders:
            info, folder_shards = open_folder(path)
            if info.get("vocab_size", 0) > vocab_size:
                raise DataError(f"{path} was tokenized for {info['vocab_size']} ids, "
                                f"more than the model's {vocab_size}")
            infos.append(info)
            members = []
            for shard in folder_shards:
                k = len(shards)
                shards.append(shard)
                n = len(shard)
                where.append(np.stack([np.full(n, k), np.arange(n)], axis=1))
                lengths.append(shard.lengths)
                loss_tokens.append(shard.loss_tokens)
                fits = (shard.lengths <= max_len) & (shard.loss_tokens > 0)
                too_long += int((shard.lengths > max_len).sum())
                unsupervised += int(((shard.lengths <= max_len) & (shard.loss_tokens == 0)).sum())
                present = np.bincount(shard.task_ids, minlength=len(shard.tasks))
                kept = np.bincount(shard.task_ids, weights=fits, minlength=len(shard.tasks))
                for task, n, k in zip(shard.tasks, present, kept, strict=True):
                    if n:
                        tasks[task] = tasks.get(task, 0) + int(k)
                members.append(count + np.flatnonzero(fits))
                count += n
            groups.append(np.concatenate(members) if members else np.zeros(0, dtype=np.int64))
            if not len(groups[-1]):  # a mixture component would silently drop out of training
                raise DataError(f"no usable training example in {path} "
                                f"(all empty, unsupervised or longer than {max_len} tokens)")
        skipped = {f"longer than {max_len} tokens": too_long, "without a supervised token": unsupervised}
        return cls(folders, infos, shards, np.concatenate(where), np.concatenate(lengths),
                   np.concatenate(loss_tokens), groups, {r: n for r, n in skipped.items() if n},
                   sorted(t for t, kept in tasks.items() if not kept))

    def check_tokenizer(self, model: Path) -> None:
        """Refuse a folder tokenized with ids that mean other tokens to the tokenizer of `model`."""
        tok = load_tokenizer(model)
        for (path, _), info in zip(self.folders, self.infos, strict=True):
            if not matches_tokenizer(info, tok):
                raise DataError(f"{path} was tokenized with {info.get('tokenizer')} ({info.get('vocab_size')} ids), "
                                f"which does not match the tokenizer of {model} ({tok.vocab_size} ids): "
                                f"prepare the data again with --model {model}")

    def sample(self, index: int):
        shard, local = self.where[index]
        return self.shards[int(shard)].sample(int(local))


class SFTTask:
    """The `loop.Task` of language-model training."""

    kind = "lm"

    def __init__(self, module: nn.Module, data: LMData, plan: Plan, cfg: SFTConfig, pad_id: int,
                 device: torch.device) -> None:
        self.module, self.data, self.plan, self.cfg = module, data, plan, cfg
        self.pad_id, self.device = pad_id, device

    def normalizer(self, step: int) -> float:
        indices, _ = self.plan.step(step)
        return float(self.data.loss_tokens[indices].sum())

    def collate(self, batch: MicroBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """(inputs, targets, weights), each (B, T): next-token pairs, right-padded; and the real token count."""
        rows = []
        for index, drop in zip(batch.indices, batch.drop_prompt, strict=True):
            s = self.data.sample(index)
            s = s.without_prompt() if drop else s
            rows.append((s.ids, s.loss_mask))
        width = max(len(ids) for ids, _ in rows) - 1
        inputs = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        targets = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        weights = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, (ids, mask) in enumerate(rows):
            n = len(ids) - 1
            inputs[i, :n], targets[i, :n], weights[i, :n] = ids[:-1], ids[1:], mask[1:]
        tokens = sum(len(ids) - 1 for ids, _ in rows)
        return inputs.to(self.device), targets.to(self.device), weights.to(self.device), tokens

    def micro_loss(self, batch: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inputs, targets, weights, tokens = self.collate(batch)
        loss = self.module(inputs, targets, weights)
        return loss, {"tokens": torch.tensor(float(tokens)), "loss_tokens": weights.sum().double()}

    def summarize(self, stats: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"loss_tokens": int(stats["loss_tokens"])}

    def fingerprint(self) -> dict[str, Any]:
        return {"data": [[str(p.resolve()), w] for p, w in self.data.folders], "examples": int(len(self.data.lengths)),
                "global_batch": self.plan.layout.global_batch, "micro_batch_size": self.cfg.micro_batch_size,
                "seed": self.cfg.seed, "null_prompt_prob": self.cfg.null_prompt_prob,
                "bucket_window": self.cfg.bucket_window, "max_seq_len": self.cfg.max_seq_len}


def _base(cfg: SFTConfig) -> tuple[LMConfig, Path | None]:
    """The architecture `cfg` names (a preset, or the base folder's config) and the base folder."""
    if cfg.preset is not None:
        return lm_preset(cfg.preset), None
    base = ckpt.resolve(cfg.model)
    return lm_config(base), base


def _with_context(lm_cfg: LMConfig, cfg: SFTConfig) -> LMConfig:
    """A longer `max_seq_len` than the model's context raises it, as the official recipe's update_configs."""
    if cfg.max_seq_len > lm_cfg.max_position_embeddings:
        return dataclasses.replace(lm_cfg, max_position_embeddings=cfg.max_seq_len)
    return lm_cfg


def build_model(cfg: SFTConfig) -> tuple[Transformer, LMConfig, Path | None]:
    """(model on CPU in fp32, its config, the base folder if any) as `cfg` asks."""
    lm_cfg, base = _base(cfg)
    if cfg.init:
        with build_on_meta():  # allocate once, then draw every weight from our generator
            model = Transformer(lm_cfg)
        model.to_empty(device="cpu")
        model.init_weights(0.02, torch.Generator().manual_seed(cfg.seed))
    else:
        model = deepen_lm(ckpt.load_lm(base, dtype=torch.float32, device="cpu"), cfg.add_layers)
    model.config = _with_context(model.config, cfg)
    return model, model.config, base


def _export(cfg: SFTConfig, model_state: dict[str, torch.Tensor], lm_cfg: LMConfig, base: Path | None,
            dest: Path) -> Path:
    """Write the trained LM (`model_state` of `LMLoss`) in the original layout under `dest`."""
    prefix = "lm."
    state = {k[len(prefix):]: v for k, v in model_state.items() if k.startswith(prefix)}
    info = read_dataset_info(_parse_data(cfg.data[0])[0])
    tokenizer_dir = base if base is not None and _has_tokenizer(base) else (
        Path(info["tokenizer"]) if info.get("tokenizer") else None)
    vision = cfg.vision_tokenizer or info.get("vision_tokenizer")
    return export.export_lm(state, lm_cfg, dest,
                            lora_scale=cfg.lora_alpha / cfg.lora_rank if cfg.lora_rank else None, base=base,
                            tokenizer_dir=tokenizer_dir, vision_tokenizer=Path(vision) if vision else None,
                            dtype=cfg.export_dtype)


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("emu3.tiktoken", "vocab.json"))


def train_lm(cfg: SFTConfig, on_step: StepCallback | None = None) -> dict[str, Any]:
    """Run (or resume) LM training as `cfg` says; returns a summary. Every process calls this."""
    info = distributed.setup(cfg.device)
    try:
        check_output(cfg)  # the output folder and the data are checked before the weights are read
        arch, base = _base(cfg)
        max_len = cfg.max_seq_len or arch.max_position_embeddings
        data = LMData.open(cfg.data, max_len, arch.vocab_size)
        if base is not None and _has_tokenizer(base):
            data.check_tokenizer(base)
        if data.lost_tasks and info.is_main:
            warnings.warn(f"no example of task {', '.join(data.lost_tasks)} is left to train on: each is longer "
                          f"than {max_len} tokens or has no supervised token", stacklevel=2)
        layout = Layout(cfg.micro_batch_size, cfg.grad_accum, info.world_size)
        plan = Plan(data.lengths, data.groups, [w for _, w in data.folders], layout, seed=cfg.seed,
                    bucket_window=cfg.bucket_window, drop_prob=cfg.null_prompt_prob)
        model, lm_cfg, base = build_model(cfg)
        if cfg.lora_rank:
            add_lora(model, cfg.lora_targets, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.seed)
        model.gradient_checkpointing = cfg.gradient_checkpointing
        module = distributed.shard(LMLoss(model, cfg.loss_chunk), list(model.model.layers), info)
        task = SFTTask(module, data, plan, cfg, lm_cfg.pad_token_id, info.device)
        torch.manual_seed(cfg.seed + info.rank)  # dropout streams; a resumed run restores its saved states
        result = fit(cfg, task, info, on_step)
        summary = {"steps": result.steps, **result.final, "examples": int(sum(len(g) for g in data.groups)),
                   "skipped": sum(data.skipped.values()), "skipped_by_reason": data.skipped,
                   "tasks_lost": data.lost_tasks, "world_size": info.world_size}
        if info.is_main and cfg.save:
            summary["export"] = str(_export(cfg, result.model_state, lm_cfg, base, Path(cfg.output) / "export"))
        distributed.barrier(info)
        return summary
    finally:
        distributed.teardown(info)


def export_checkpoint(folder: Path, dest: Path, cfg: SFTConfig) -> Path:
    """Export the model of LM checkpoint `folder` (trained with `cfg`) under `dest`; returns the LM folder."""
    lm_cfg, base = _base(cfg)
    return _export(cfg, load_file(str(folder / "model.safetensors")),
                   _with_context(deepened_config(lm_cfg, cfg.add_layers), cfg), base, dest)

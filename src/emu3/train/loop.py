"""The optimisation loop shared by LM fine-tuning and vision-tokenizer training.

A `Task` says what a step trains on (`plan`, `normalizer`) and how a micro-batch turns into a
summed loss (`micro_loss`); `fit` does the rest, identically for 1 or N processes: bf16 autocast on
GPU, gradient accumulation, global-norm clipping, AdamW with the warmup + cosine schedule,
metrics (JSONL, progress bar, optional TensorBoard), atomic checkpoints every `save_every` steps
and at the end, and exact resumption. The loss of a step is the sum over its whole global batch
divided by a global normalizer (supervised tokens, or samples) that every process computes from
the plan, so the result does not depend on how the batch is split across processes and
micro-batches. This module does not know what the model is.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file
from torch import nn

from emu3.train import state
from emu3.train.batching import MicroBatch, Plan
from emu3.train.config import LoopConfig
from emu3.train.distributed import DistInfo, all_reduce_sum
from emu3.train.metrics import MetricsLog, Progress, drop_after, peak_memory_gb
from emu3.train.optim import build_optimizer, lr_at

LOG_FILE = "metrics.jsonl"
StepCallback = Callable[[dict[str, Any]], None]


class Task(Protocol):
    kind: str  # "lm" or "vq": recorded in checkpoints, so that `emu3 export` knows what it holds
    module: nn.Module  # computes the loss; sharded when several processes run
    plan: Plan

    def normalizer(self, step: int) -> float:
        """The denominator of step `step`'s loss, over the whole global batch."""

    def micro_loss(self, batch: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(summed loss, summable statistics such as "tokens") of one micro-batch."""

    def summarize(self, stats: dict[str, torch.Tensor]) -> dict[str, float]:
        """Loggable numbers from the statistics summed over the step and all processes."""

    def fingerprint(self) -> dict[str, Any]:
        """What must not change between a checkpoint and its resumption (data, batch layout, seed, what trains)."""


@dataclass
class FitResult:
    steps: int
    final: dict[str, Any]
    model_state: dict[str, torch.Tensor]  # full state of `task.module` (rank 0; empty elsewhere)


def uses_bf16(cfg: LoopConfig, device: torch.device) -> bool:
    return cfg.dtype in ("bf16", "bfloat16") or (cfg.dtype == "auto" and device.type == "cuda")


def autocast(cfg: LoopConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast when asked for (default on GPU); fp32 otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if uses_bf16(cfg, device) else contextlib.nullcontext()


def warn_if_bf16_is_slow(cfg: LoopConfig, device: torch.device) -> None:
    """Warn when bf16 is asked for on a CPU without bf16 matrix instructions (AMX or AVX512-BF16), where it
    trains far slower than fp32 (about 30x on a 2-core AMD EPYC with AVX2 only; benchmarks/RESULTS.md)."""
    has_bf16_units = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)() or \
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    if device.type == "cpu" and uses_bf16(cfg, device) and not has_bf16_units:
        warnings.warn("--dtype bf16 on a CPU without AMX or AVX512-BF16: expect training far slower than with "
                      "fp32 (measure with benchmarks/train_throughput.py --dtype bf16)", stacklevel=2)


def total_steps(cfg: LoopConfig, plan: Plan) -> int:
    return cfg.max_steps or cfg.epochs * plan.steps_per_epoch


def check_output(cfg: LoopConfig) -> Path | None:
    """The checkpoint to resume from (None for a fresh run), or an error when `--output` does not suit
    `--resume`: a fresh run into a folder holding checkpoints, or a resumption with none. Cheap, so the
    commands call it before loading anything."""
    output = Path(cfg.output)
    found = state.latest(output)
    if not cfg.resume and found is not None:
        raise state.ResumeError(f"{output} already holds checkpoints ({found.name}); pass --resume to "
                                "continue, or choose another --output")
    if cfg.resume and found is None:
        raise state.ResumeError(f"--resume: no checkpoint in {output / state.CHECKPOINTS}")
    return found


def _start(cfg: LoopConfig, task: Task, optimizer, info: DistInfo, total: int) -> tuple[int, dict[str, Any]]:
    """(the step to start from, the metrics of the step before it) after restoring a checkpoint if resuming.

    The checkpoint's settings are checked before its weights are read, so a refusal comes at once."""
    found = check_output(cfg)
    if found is None:
        return 0, {}
    saved = state.read_state(found)
    now = task.fingerprint()
    if saved.get("fingerprint") != now:
        changed = sorted(k for k in set(now) | set(saved.get("fingerprint", {}))
                         if now.get(k) != saved.get("fingerprint", {}).get(k))
        raise state.ResumeError(f"cannot resume {found}: settings it was trained with changed ({changed}), "
                                "so the run would not continue where it stopped")
    step = int(saved["step"])
    if step > total:
        raise state.ResumeError(f"cannot resume {found}: it is at step {step}, past the {total} steps this run is "
                                f"set to (raise --max-steps or --epochs; `emu3 export {found}` writes its model)")
    state.load(found, task.module, optimizer, info)
    return step, saved.get("last", {})


def _grad_norm(params: list[nn.Parameter], max_norm: float) -> float:
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    return float(norm)


def fit(cfg: LoopConfig, task: Task, info: DistInfo, on_step: StepCallback | None = None) -> FitResult:
    """Train `task.module` for `total_steps`; every process calls this."""
    output = Path(cfg.output)
    total = total_steps(cfg, task.plan)
    optimizer = build_optimizer(task.module, cfg)
    first, final = _start(cfg, task, optimizer, info, total)  # final: the last step's metrics, until a step runs
    if info.is_main:
        warn_if_bf16_is_slow(cfg, info.device)
    params = [p for p in task.module.parameters() if p.requires_grad]
    if first and info.is_main:
        drop_after(output / LOG_FILE, first)
    log = MetricsLog(output / LOG_FILE, output / "tensorboard" if cfg.tensorboard else None) if info.is_main else None
    progress = Progress("train", total, info.is_main and not cfg.quiet, done=first)
    progress.update(first)
    model_state: dict[str, torch.Tensor] = {}
    task.module.train()
    try:
        for step in range(first, total):
            start = time.perf_counter()
            lr = lr_at(step, cfg, total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            norm = task.normalizer(step)
            loss_sum = torch.zeros((), dtype=torch.float64, device=info.device)
            stats: dict[str, torch.Tensor] = {}
            for batch in task.plan.micro_batches(step, info.rank):
                with autocast(cfg, info.device):
                    loss, micro_stats = task.micro_loss(batch)
                # FSDP averages gradients over processes: scale so that they sum to d(loss_sum)/norm.
                (loss * (info.world_size / norm)).backward()
                loss_sum += loss.detach().double()
                for key, value in micro_stats.items():
                    stats[key] = stats[key] + value if key in stats else value.detach().double().clone()
            grad_norm = _grad_norm(params, cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            packed = torch.cat([loss_sum.reshape(1)] + [v.reshape(-1).to(info.device) for v in stats.values()])
            all_reduce_sum(packed, info)
            reduced, offset = {}, 1
            for key, value in stats.items():
                reduced[key] = packed[offset:offset + value.numel()].reshape(value.shape).cpu()
                offset += value.numel()
            seconds = time.perf_counter() - start
            tokens = float(reduced.get("tokens", torch.zeros(())).sum())
            final = {"step": step + 1, "loss": float(packed[0]) / norm, "lr": lr, "grad_norm": grad_norm,
                     "tokens": int(tokens), "tokens_per_s": tokens / seconds, "step_s": seconds,
                     "memory_gb": peak_memory_gb(info.device), **task.summarize(reduced)}
            if log is not None and ((step + 1) % cfg.log_every == 0 or step + 1 == total):
                log.write(final)
            progress.update(step + 1, loss=final["loss"], lr=lr, tok_s=round(final["tokens_per_s"]))
            if cfg.save and ((step + 1) % cfg.save_every == 0 or step + 1 == total):
                trainer_state = {"kind": task.kind, "config": cfg.to_dict(), "fingerprint": task.fingerprint(),
                                 "last": final}
                model_state = state.save(output, step + 1, task.module, optimizer, info, trainer_state,
                                         cfg.keep_checkpoints)
            if on_step is not None:
                on_step(final)
    finally:
        progress.close()
        if log is not None:
            log.close()
    if not model_state and first >= total and info.is_main:  # nothing left to do: reuse the last checkpoint
        model_state = load_file(str(state.latest(output) / "model.safetensors"))
    return FitResult(total, final, model_state)

"""Training checkpoints: model, optimizer, step, data position and RNG states, written atomically.

Layout of `OUTPUT/checkpoints/`:

    step-00000500/model.safetensors        full (unsharded) model state, fp32, our parameter names
    step-00000500/optimizer.safetensors    AdamW moments and step counts, keyed `state/<param>/<name>`
    step-00000500/optimizer.json           AdamW param groups (hyper-parameters, parameter names)
    step-00000500/rng-<rank>.safetensors   each process' CPU (and CUDA) generator state
    step-00000500/trainer_state.json       step, the settings, the data fingerprint, the weights not yet
                                           stepped (written last)
    latest                                 the name of the newest complete checkpoint

A checkpoint is built in a temporary folder, fsynced and renamed; only then is `latest` rewritten
(atomically). A crash at any point leaves `latest` naming a complete checkpoint. The learning-rate
schedule and the data order are pure functions of the step, so the step *is* their state. States
are full (gathered with `torch.distributed.checkpoint.state_dict` on rank 0 and broadcast back on
load), so a run can resume on a different number of processes; the cost is that rank 0 holds the
full state in host memory while saving. Nothing is pickled. This module does not decide when to save.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from emu3.train import atomic
from emu3.train.distributed import DistInfo, barrier

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE_FILE = "trainer_state.json"
STATELESS = "params_without_optimizer_state"  # in STATE_FILE: names of trainable weights never stepped


class ResumeError(ValueError):
    """No usable checkpoint to resume from, or one made with incompatible settings."""


def checkpoint_root(output: Path) -> Path:
    return output / CHECKPOINTS


def latest(output: Path) -> Path | None:
    """The newest complete checkpoint folder, or None when there is none."""
    pointer = checkpoint_root(output) / LATEST
    if not pointer.is_file():
        return None
    folder = checkpoint_root(output) / pointer.read_text(encoding="utf-8").strip()
    if not (folder / STATE_FILE).is_file():
        raise ResumeError(f"{pointer} names {folder.name}, which is missing or incomplete")
    return folder


def read_state(folder: Path) -> dict[str, Any]:
    """The trainer state (step, kind, settings) of a checkpoint folder."""
    try:
        return json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ResumeError(f"{folder} is not a complete training checkpoint: {exc}") from exc


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _flatten_optimizer(osd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for name, values in osd["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{name}/{key}"] = value.detach().contiguous()
            else:
                scalars[f"{name}/{key}"] = value
    return tensors, {"param_groups": osd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        name, _, leaf = key[len("state/"):].rpartition("/")
        state.setdefault(name, {})[leaf] = value
    for key, value in meta["scalars"].items():
        name, _, leaf = key.rpartition("/")
        state.setdefault(name, {})[leaf] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def save(output: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo,
         trainer_state: dict[str, Any], keep: int) -> dict[str, torch.Tensor]:
    """Write checkpoint `step` (every process calls this); returns the full model state on rank 0."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=opts)
    optim_state = get_optimizer_state_dict(model, optimizer, options=opts)
    root = checkpoint_root(output)
    final = root / f"step-{step:08d}"
    if info.is_main:
        with atomic.staged_dir(final) as tmp:
            barrier(info)  # the others write their RNG states into the staging folder now
            save_file(_rng_state(info.device), str(tmp / f"rng-{info.rank}.safetensors"))
            save_file({k: v.contiguous() for k, v in model_state.items()}, str(tmp / "model.safetensors"))
            tensors, meta = _flatten_optimizer(optim_state)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            (tmp / "optimizer.json").write_text(json.dumps(meta), encoding="utf-8")
            barrier(info)
            state = {**trainer_state, "step": step, "world_size": info.world_size, "saved_at": time.time(),
                     STATELESS: _stateless_params(model, optimizer)}
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        atomic.write_text(root / LATEST, final.name + "\n")
        _prune(root, keep)
    else:
        barrier(info)
        save_file(_rng_state(info.device), str(atomic.staging_path(final) / f"rng-{info.rank}.safetensors"))
        barrier(info)
    barrier(info)
    return model_state


def _stateless_params(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The trainable weights the optimizer has not stepped yet (so has no state for)."""
    return [name for name, param in model.named_parameters() if param.requires_grad and param not in optimizer.state]


def _prune(root: Path, keep: int) -> None:
    done = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo) -> dict[str, Any]:
    """Restore model, optimizer and this process' RNG from checkpoint `folder`; returns its trainer state."""
    trainer_state = read_state(folder)
    try:
        model_state, optim_state = {}, {}
        if info.is_main:
            model_state = load_file(str(folder / "model.safetensors"))
            meta = json.loads((folder / "optimizer.json").read_text(encoding="utf-8"))
            optim_state = _unflatten_optimizer(load_file(str(folder / "optimizer.safetensors")), meta)
    except (OSError, json.JSONDecodeError, SafetensorError) as exc:
        raise ResumeError(f"checkpoint {folder} is unreadable: {exc}") from exc
    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=info.world_size > 1)
    try:
        set_model_state_dict(model, model_state, options=opts)
    except RuntimeError as exc:  # missing, unexpected or reshaped weights
        detail = str(exc).strip().splitlines()
        raise ResumeError(f"checkpoint {folder} does not fit the model being trained (were --add-layers, "
                          f"LoRA or the model changed since?): {' '.join(line.strip() for line in detail[:3])}"
                          ) from None
    # A weight that had no gradient before the save (the codebook during train-vq's autoencoder warm-up)
    # has no optimizer state yet. Loading fills one in with a zero step; it is dropped, so that the
    # weight starts its state at its first step, as it would have without the resume.
    set_optimizer_state_dict(model, optimizer, optim_state, options=dataclasses.replace(opts, strict=False))
    stateless = set(trainer_state.pop(STATELESS, []))
    for name, param in model.named_parameters():
        if name in stateless:
            optimizer.state.pop(param, None)
    rng_file = folder / f"rng-{info.rank}.safetensors"
    if rng_file.is_file():
        try:
            rng = load_file(str(rng_file))
            torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and info.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], info.device)
        except (OSError, SafetensorError, KeyError, RuntimeError) as exc:
            raise ResumeError(f"checkpoint {folder} is unreadable: {rng_file.name}: {exc}") from exc
    return trainer_state

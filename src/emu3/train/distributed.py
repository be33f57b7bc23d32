"""One or many processes: process-group setup from the torchrun environment, and FSDP2 sharding.

`setup` reads torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); with one
process no group is created and everything below is a no-op, so single-process training is the
same code path. Several processes shard the model with FSDP2 (`fully_shard`: one unit per decoder
layer or block, plus the root) over NCCL on GPUs and over gloo on CPUs: with torch 2.13, FSDP2's
all-gather and reduce-scatter work on gloo, so the CPU tests exercise the same sharding as GPU runs
(DDP is not needed). Gradients are reduce-scattered after every micro-batch, keeping them sharded
(the memory-lean choice for 8B models). This module does not build models or optimizers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # we created the process group, so we destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}: {exc}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but no CUDA GPU is available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def setup(device_name: str = "auto") -> DistInfo:
    """Join (or create) the process group described by the environment; pick this process' device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _device(device_name, local_rank)
    owns = False
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device, owns)
    return DistInfo(0, 1, 0, device, False)


def shard(model: nn.Module, blocks: list[nn.Module], info: DistInfo) -> nn.Module:
    """FSDP2-shard each of `blocks` and then `model` (the root) across all processes; moves to the device."""
    if info.world_size == 1:
        return model.to(info.device)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(info.device.type, (info.world_size,))
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over processes, in place (a no-op for one process)."""
    if info.world_size > 1:
        dist.all_reduce(t)
    return t


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def teardown(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()

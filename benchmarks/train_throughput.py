"""Language-model training throughput on synthetic data (a preset, or a model folder's shapes); prints JSON.

    python benchmarks/train_throughput.py --preset tiny
    python benchmarks/train_throughput.py --preset small --seq-len 1024 --micro-batch-size 2
    python benchmarks/train_throughput.py --model src/emu3/assets/shapes/model --seq-len 300 --micro-batch-size 16 \
        --no-gradient-checkpointing --dtype bf16
    torchrun --nproc-per-node 8 benchmarks/train_throughput.py --preset emu3-8b --seq-len 8192 --micro-batch-size 1

Runs the real `emu3 train` path (`train_lm`: data shards, bucketing, the chunked loss, AdamW,
clipping, FSDP2 under torchrun, bf16 autocast on GPU) from a random initialisation on random
text-to-image-like sequences (one bos, then visual tokens, all supervised), with checkpoints off.
`--model DIR` takes the shapes (and vocabulary) of that folder's LM instead of a preset; its
sequences are then random ids of that vocabulary.
Reports tokens/s over the steps after `--warmup` (all processes together), peak memory (CUDA peak
allocation, or the process' peak RSS on CPU) and the settings.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from emu3.checkpoint import resolve
from emu3.config import lm_preset
from emu3.train.config import SFTConfig
from emu3.train.examples import Example
from emu3.train.metrics import read_log
from emu3.train.prepare import lm_config
from emu3.train.sft import train_lm
from emu3.train.shards import write_dataset
from emu3.vocab import EMU3


def synthetic_data(folder: Path, n: int, seq_len: int, seed: int, vocab_size: int | None) -> None:
    """`n` sequences: the official vocabulary's bos and visual tokens, or ids below `vocab_size` when given."""
    g = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(n):
        if vocab_size is None:
            codes = torch.randint(0, EMU3.codebook_size, (seq_len - 1,), generator=g)
            ids = [EMU3.bos] + EMU3.code_to_id(codes).tolist()
        else:
            ids = torch.randint(0, vocab_size, (seq_len,), generator=g).tolist()
        examples.append(Example(ids, [0] + [1] * (seq_len - 1), "t2i"))
    write_dataset(folder, examples, {"vocab_size": vocab_size or EMU3.size})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--model", help="an LM folder (or name) whose config, not weights, replaces --preset")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--steps", type=int, default=10, help="measured steps")
    p.add_argument("--warmup", type=int, default=3, help="steps run before measuring")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--lora-rank", type=int, default=0)
    args = p.parse_args()
    cfg_lm = lm_config(resolve(args.model)) if args.model else lm_preset(args.preset)
    if args.seq_len > cfg_lm.max_position_embeddings:
        raise SystemExit(f"--seq-len {args.seq_len} exceeds the model's context {cfg_lm.max_position_embeddings}")
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    steps = args.warmup + args.steps
    # One folder for all processes of a torchrun job (its run id), a fresh one otherwise.
    tmp = Path(tempfile.gettempdir()) / f"emu3-train-bench-{os.environ.get('TORCHELASTIC_RUN_ID', os.getpid())}"
    data = tmp / "data"
    try:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            synthetic_data(data, steps * args.micro_batch_size * args.grad_accum * world, args.seq_len, 0,
                           cfg_lm.vocab_size if args.model else None)
        while not (data / "dataset.json").is_file():  # the others wait for rank 0's data
            time.sleep(0.1)
        source = {"model": args.model} if args.model else {"preset": args.preset}
        cfg = SFTConfig(output=str(tmp / "run"), data=[str(data)], **source, init=True,
                        max_steps=steps, micro_batch_size=args.micro_batch_size, grad_accum=args.grad_accum,
                        warmup_steps=0, lr=1e-4, min_lr=1e-5, device=args.device, dtype=args.dtype,
                        gradient_checkpointing=args.gradient_checkpointing, lora_rank=args.lora_rank,
                        null_prompt_prob=0.0, save=False, quiet=True)
        summary = train_lm(cfg)
        if rank != 0:
            return
        measured = read_log(tmp / "run" / "metrics.jsonl")[args.warmup:]
    finally:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
    tokens = sum(r["tokens"] for r in measured)
    seconds = sum(r["step_s"] for r in measured)
    print(json.dumps({
        **source, "device": _device_name(args.device),
        "world_size": summary["world_size"], "seq_len": args.seq_len, "micro_batch_size": args.micro_batch_size,
        "grad_accum": args.grad_accum, "gradient_checkpointing": args.gradient_checkpointing,
        "lora_rank": args.lora_rank, "dtype": args.dtype, "parameters": _parameters(cfg_lm),
        "steps": len(measured), "tokens_per_s": round(tokens / seconds, 1), "step_s": round(seconds / len(measured), 4),
        "peak_memory_gb": round(max(r["memory_gb"] for r in measured), 3), "torch": torch.__version__,
    }))


def _device_name(flag: str) -> str:
    if flag.startswith("cuda") or (flag == "auto" and torch.cuda.is_available()):
        return torch.cuda.get_device_name()
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), cpu)
    return f"cpu: {cpu}, {torch.get_num_threads()} threads"


def _parameters(cfg) -> int:
    from emu3.model import Transformer

    with torch.device("meta"):
        return Transformer(cfg).num_parameters()


if __name__ == "__main__":
    main()

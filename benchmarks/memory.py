"""The memory planner against a measurement; prints one JSON object.

    python benchmarks/memory.py --preset small --grid 16 16 --batch 2

On a GPU the measurement is `torch.cuda.max_memory_allocated`; on a CPU it is the process's peak
resident set minus what it held before the model was built (so it includes allocator overhead).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys

import torch

from emu3.cli import resolve_device
from emu3.config import lm_preset
from emu3.defaults import GUIDANCE_SCALE, TOP_K
from emu3.generation import SamplingConfig
from emu3.generation.engine import generate_images
from emu3.generation.memory import plan_generation
from emu3.model import Transformer
from emu3.vocab import EMU3

HEADER = [EMU3.boi, 23, 9, 23, EMU3.img]  # how the prompt ends: boi, the image size, img


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    """This program's peak resident memory (VmHWM). Not ru_maxrss: after a vfork+exec from a large
    parent (a test runner) that reports the parent's peak."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["VmHWM"].split()[0]) * 1024


def measure(args) -> dict:
    device = args.device
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    h, w = args.grid
    prompt = [EMU3.bos] + list(range(1000, 1000 + args.prompt_len - 1 - len(HEADER))) + HEADER
    new_tokens = h * (w + 1) + 3
    cfg = lm_preset(args.preset, max_position_embeddings=len(prompt) + new_tokens + args.draft_len + 8)
    plan = plan_generation(cfg, dtype=dtype, batch=args.batch, prompt_len=len(prompt), new_tokens=new_tokens,
                           guidance=True, draft_len=args.draft_len, materialized_attention=device.type == "cpu")
    base = rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.device(device):
        model = Transformer(cfg).to(dtype).eval()
    generate_images(model, [prompt] * args.batch, [(h, w)] * args.batch, vocab=EMU3,
                    sampling=SamplingConfig(top_k=TOP_K), negative_prompts=[prompt] * args.batch,
                    cfg_scale=GUIDANCE_SCALE, seeds=list(range(args.batch)), draft_len=args.draft_len)
    if device.type == "cuda":
        measured = torch.cuda.max_memory_allocated(device)
    else:
        measured = peak_rss_bytes() - base
    return {"preset": args.preset, "device": str(device), "dtype": args.dtype, "batch": args.batch,
            "grid": [h, w], "prompt_len": len(prompt), "draft_len": args.draft_len, "planned_mb": plan.total / 2**20,
            "measured_mb": measured / 2**20, "ratio": plan.total / measured,
            "plan": {"weights_mb": plan.weights / 2**20, "kv_cache_mb": plan.kv_cache / 2**20,
                     "activations_mb": plan.activations / 2**20}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--grid", type=int, nargs=2, default=(16, 16))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=40, help="prompt tokens (default 40)")
    p.add_argument("--draft-len", type=int, default=0)
    args = p.parse_args(argv)
    if args.prompt_len < 1 + len(HEADER):
        p.error(f"--prompt-len must be at least {1 + len(HEADER)}: bos, then boi, the image size and img")
    try:
        args.device = resolve_device(args.device)
    except ValueError as exc:
        sys.exit(f"{p.prog}: {exc}")
    json.dump(measure(args), sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Text-to-image decoding speed on random weights of a preset; prints one JSON object.

    python benchmarks/generate.py --preset small --grid 16 16 --compare-transformers
    python benchmarks/generate.py --preset emu3-8b --device cuda --dtype bf16 --grid 90 90

Measures our fast image loop (guidance batched in one forward, visual-slice head) and, with
`--compare-transformers`, transformers' Emu3 port on the same weights, prompt, guidance and grid
constraint (its `generate` with `guidance_scale`, `negative_prompt_ids` and the official
prefix-constraint callback). Each is timed the same way (best of `--repeats` runs after a warm-up)
and reports tokens/s, seconds per image and its own peak memory: the process's during its runs (the
GPU's allocated peak, or the resident set on a CPU), weights included. Ours also reports model
forwards per image (the batch's forwards over its images).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from emu3.config import lm_preset
from emu3.defaults import GUIDANCE_SCALE, TOP_K
from emu3.generation import SamplingConfig
from emu3.generation.engine import compiled_step, generate_images
from emu3.model import Transformer
from emu3.vocab import EMU3

PROMPT = [EMU3.bos] + list(range(1000, 1012)) + [EMU3.boi, 23, 9, 23, EMU3.img]  # "bos <12 text ids> boi 8*8 img"
NEGATIVE = [EMU3.bos] + list(range(2000, 2008)) + [EMU3.boi, 23, 9, 23, EMU3.img]


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak for `peak_memory_mb` at the memory held now."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with open("/proc/self/clear_refs", "w") as f:  # "5": VmHWM back to the current resident memory
            f.write("5")


def peak_memory_mb(device: torch.device) -> float:
    """The peak since the last `reset_peak_memory`."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with open("/proc/self/status") as f:  # VmHWM: peak resident memory (since the reset), in kB
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["VmHWM"].split()[0]) / 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(args) -> Transformer:
    cfg = lm_preset(args.preset, max_position_embeddings=max(4096, args.grid[0] * (args.grid[1] + 1) + 64))
    with torch.device(args.device):
        model = Transformer(cfg).to(args.dtype)
    model.init_weights(std=0.02, generator=torch.Generator(args.device).manual_seed(0))
    return model.eval()


def run_ours(model, args) -> dict:
    h, w = args.grid
    sampling = SamplingConfig(top_k=TOP_K)
    forwards = 0
    step = compiled_step(model) if args.compile else model.hidden

    def counting(*a):
        nonlocal forwards
        forwards += 1
        return step(*a)

    kwargs = dict(vocab=EMU3, sampling=sampling, negative_prompts=[NEGATIVE] * args.batch, cfg_scale=args.cfg)
    reset_peak_memory(args.device)
    generate_images(model, [PROMPT] * args.batch, [(h, w)] * args.batch, step_fn=counting, seeds=[0] * args.batch,
                    **kwargs)  # warm-up (and compilation)
    sync(args.device)
    times = []
    for r in range(args.repeats):
        forwards = 0
        start = time.perf_counter()
        out = generate_images(model, [PROMPT] * args.batch, [(h, w)] * args.batch, step_fn=counting,
                              seeds=list(range(r, r + args.batch)), **kwargs)
        sync(args.device)
        times.append(time.perf_counter() - start)
    seconds = min(times)
    tokens = sum(len(o) for o in out)
    return {"tokens_per_s": tokens / seconds, "seconds_per_image": seconds / args.batch,
            # one prefill, then the decode steps, each for the whole batch
            "seconds_per_batch": seconds, "forwards_per_image": (forwards + 1) / args.batch,
            "tokens_per_image": tokens / args.batch, "peak_memory_mb": peak_memory_mb(args.device)}


def run_transformers(model, args) -> dict:
    import transformers

    cfg = model.config
    text_cfg = transformers.Emu3TextConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta}, pad_token_id=cfg.pad_token_id,
        attention_dropout=0.0)
    hf = transformers.Emu3ForCausalLM(text_cfg).to(device=args.device, dtype=args.dtype).eval()
    # assign: it shares our weights, so each implementation's peak memory holds one copy of them
    missing, unexpected = hf.load_state_dict(model.state_dict(), strict=False, assign=True)
    if [k for k in missing if "rotary" not in k] or unexpected:
        raise RuntimeError(f"weights did not map onto transformers: {missing} {unexpected}")
    h, w = args.grid
    visual = list(range(EMU3.visual_base, EMU3.visual_end))

    def allowed(batch_id, ids):  # the official prefix constraint, as a per-token Python callback
        offset = ids.shape[0] - len(PROMPT) + 1
        if offset % (w + 1) == 0:
            return [EMU3.eol]
        for k, token in ((1, EMU3.eof), (2, EMU3.eoi), (3, EMU3.eos)):
            if offset == (w + 1) * h + k:
                return [token]
        return [EMU3.pad] if offset > (w + 1) * h + 3 else visual

    total = h * (w + 1) + 3
    ids = torch.tensor([PROMPT] * args.batch, device=args.device)
    kwargs = dict(max_new_tokens=total, do_sample=True, top_k=TOP_K, guidance_scale=args.cfg,
                  negative_prompt_ids=torch.tensor([NEGATIVE] * args.batch, device=args.device),
                  prefix_allowed_tokens_fn=allowed, attention_mask=torch.ones_like(ids), pad_token_id=EMU3.pad,
                  eos_token_id=EMU3.eos)
    reset_peak_memory(args.device)
    times = []
    with torch.inference_mode():
        hf.generate(ids, **kwargs)  # warm-up
        sync(args.device)
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = hf.generate(ids, **kwargs)
            sync(args.device)
            times.append(time.perf_counter() - start)
    seconds = min(times)
    tokens = (out.shape[1] - ids.shape[1]) * args.batch
    return {"tokens_per_s": tokens / seconds, "seconds_per_image": seconds / args.batch,
            "tokens_per_image": tokens / args.batch, "peak_memory_mb": peak_memory_mb(args.device)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--grid", type=int, nargs=2, default=(16, 16), metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--cfg", type=float, default=GUIDANCE_SCALE)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step (CUDA graphs on GPU)")
    p.add_argument("--compare-transformers", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    args.device = torch.device(args.device)
    args.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build(args)
    result = {"preset": args.preset, "device": str(args.device), "dtype": str(args.dtype).split(".")[-1],
              "grid": list(args.grid), "batch": args.batch, "cfg": args.cfg, "compile": args.compile,
              "threads": torch.get_num_threads(), "params": model.num_parameters()}
    result["emu3"] = run_ours(model, args)
    if args.compare_transformers:
        result["transformers"] = run_transformers(model, args)
        result["speedup_tokens_per_s"] = result["emu3"]["tokens_per_s"] / result["transformers"]["tokens_per_s"]
    json.dump(result, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Quality and forwards per image of each decoding mode on a trained model; prints one JSON object.

    python benchmarks/shapes_decoding.py                       # the bundled Shapes model
    python benchmarks/shapes_decoding.py --speculative 8 16 --quantize int8 --prompts 60
    python benchmarks/shapes_decoding.py --device cuda --quantize int8 fp8

For held-out ShapesEval prompts (fixed seed) it generates with plain sampling, with speculative
Jacobi decoding at each draft length, and with the LM's weights quantized, and reports per mode
the ShapesEval text-to-image score (prompts fully right, and the finer fraction of claims that
hold), model forwards per image, tokens per forward and seconds per
image. Speculative decoding samples from the same distribution as plain decoding, so its score
differs only by sampling noise; the forwards are what it saves. The device and the quantized modes
are checked before anything is loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from emu3.bundled import model_or_bundled
from emu3.cli import resolve_device
from emu3.defaults import GUIDANCE_SCALE
from emu3.eval.shapes import evaluate_shapes
from emu3.pipelines import Emu3
from emu3.pipelines.text_to_image import default_prompts, text_to_image
from emu3.quantize import check_mode


def run_mode(m: Emu3, *, prompts: int, cfg: float, draft_len: int, seed: int) -> dict:
    positive, negative = default_prompts(m)
    forwards, tokens, seconds = [], [], []

    def generate(prompt: str, s: int):
        result = text_to_image(m, prompt, seed=s, cfg=cfg, positive_prompt=positive, negative_prompt=negative,
                               draft_len=draft_len)
        forwards.append(result.forwards)
        tokens.append(len(result.token_ids[0]))
        seconds.append(result.seconds)
        return result.images[0]

    report = evaluate_shapes(generate=generate, n_prompts=prompts, seed=seed)
    return {"score": report.images.overall, "claims": report.images.claims,
            "forwards_per_image": sum(forwards) / len(forwards), "tokens_per_forward": sum(tokens) / sum(forwards),
            "seconds_per_image": sum(seconds) / len(seconds)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="LM folder (default: the bundled Shapes model)")
    p.add_argument("--prompts", type=int, default=40)
    p.add_argument("--cfg", type=float, default=GUIDANCE_SCALE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speculative", type=int, nargs="*", default=[4, 8, 16], help="draft lengths to measure")
    p.add_argument("--quantize", nargs="*", default=["int8"], help="quantized modes to measure (int8, fp8)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    try:
        device = resolve_device(a.device)
        for q in a.quantize:
            check_mode(q, device)
    except ValueError as exc:
        sys.exit(f"{p.prog}: {exc}")
    if a.threads:
        torch.set_num_threads(a.threads)
    model = model_or_bundled(a.model)
    m = Emu3.load(model, device=device)
    modes = {"plain": run_mode(m, prompts=a.prompts, cfg=a.cfg, draft_len=0, seed=a.seed)}
    for n in a.speculative:
        modes[f"speculative-{n}"] = run_mode(m, prompts=a.prompts, cfg=a.cfg, draft_len=n, seed=a.seed)
    for q in a.quantize:
        modes[q] = run_mode(Emu3.load(model, device=device, quantize=q), prompts=a.prompts, cfg=a.cfg, draft_len=0,
                            seed=a.seed)
    print(json.dumps({"model": str(model), "device": str(device), "prompts": a.prompts, "cfg": a.cfg, "seed": a.seed,
                      "date": time.strftime("%Y-%m-%d"), "modes": modes}, indent=2))


if __name__ == "__main__":
    main()

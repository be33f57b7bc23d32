"""How noisy a vision tokenizer's codes are for a language model; prints one JSON object.

    python benchmarks/tokenizer_codes.py                          # the bundled Shapes tokenizer
    python benchmarks/tokenizer_codes.py --vision-tokenizer DIR --data manifest.jsonl --pictures 500

On pictures of a manifest (images, or the first frame of clips): the share of flat patches (one
color), the code entropy of each flat color's patches averaged over those patches (0 nats:
a flat color is always the same code; 4 nats: about 55 interchangeable codes), the unigram entropy
of all codes and the number of distinct codes; and the PSNR on held-out ShapesEval pictures. This
is what `emu3 merge-codes` changes (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from collections import defaultdict

import numpy as np
import torch

from emu3.bundled import vision_tokenizer_or_bundled
from emu3.checkpoint import load_vision_tokenizer
from emu3.datasets.shapes import write_dataset
from emu3.datasets.shapes.render import render
from emu3.eval.shapes.benchmark import eval_prompts
from emu3.pipelines.reconstruct import reconstruct
from emu3.train.code_merge import patch_codes
from emu3.train.vq import read_media


def entropy(counts: torch.Tensor) -> float:
    p = counts[counts > 0].double() / counts.sum()
    return float(-(p * p.log()).sum())


@torch.inference_mode()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vision-tokenizer", help="tokenizer folder (default: the bundled one)")
    p.add_argument("--data", help="JSONL manifest of pictures (default: none; a Shapes dataset is written "
                                  "to a temporary folder)")
    p.add_argument("--pictures", type=int, default=500)
    p.add_argument("--psnr-pictures", type=int, default=100, help="held-out ShapesEval pictures for PSNR")
    a = p.parse_args()
    vq, processor = load_vision_tokenizer(vision_tokenizer_or_bundled(a.vision_tokenizer))
    with tempfile.TemporaryDirectory() as tmp:  # holds the Shapes dataset written when no --data is given
        data = a.data or str(write_dataset(tmp, n_images=a.pictures, n_vqa=0, n_videos=0, seed=1, image_size=64))
        records = read_media(data)[0][:a.pictures]
        codes, deviation, color = patch_codes(vq, processor, records)
    flat = deviation < 0.5 / 255  # one color (up to the float rounding of preprocessing)
    by_color: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for code, rgb in zip(codes[flat].tolist(), (color[flat] * 255).round().int().tolist()):
        by_color[tuple(rgb)].append(code)
    weighted = sum(entropy(torch.bincount(torch.tensor(c))) * len(c) for c in by_color.values())
    flat_entropy = weighted / max(int(flat.sum()), 1)
    prompts = eval_prompts(a.psnr_pictures, seed=0)
    psnr = float(np.mean([reconstruct(vq, processor, [render(q.scene)]).psnr for q in prompts]))
    print(json.dumps({"vision_tokenizer": str(vision_tokenizer_or_bundled(a.vision_tokenizer)),
                      "pictures": len(records), "flat_patch_share": float(flat.float().mean()),
                      "flat_color_code_entropy_nats": flat_entropy,
                      "flat_color_equivalent_codes": math.exp(flat_entropy),
                      "code_entropy_nats": entropy(torch.bincount(codes)), "distinct_codes": len(codes.unique()),
                      "heldout_psnr_db": psnr}, indent=2))


if __name__ == "__main__":
    main()

"""A language model's loss per task on prepared data folders; prints one JSON object.

    python benchmarks/lm_loss.py --model DIR --data runs/shapes/prepared fresh-train fresh-heldout

The loss is the training loss (`emu3.train.sft.LMLoss`: next-token cross-entropy on the supervised
positions, in nats per token), averaged over the first `--examples` examples of each task in each
folder. Compared across folders it separates what the model learnt by heart from what it generalises:
its own training examples, fresh examples of the same compositions (another seed of
`emu3.datasets.shapes.write_dataset`, then `emu3 prepare` with the same tokenizers) and examples of
held-out compositions (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch

from emu3.bundled import model_or_bundled
from emu3.checkpoint import load_lm
from emu3.train.sft import LMLoss
from emu3.train.shards import open_folder


@torch.inference_mode()
def folder_losses(loss: LMLoss, folder: str, examples: int) -> dict[str, dict[str, float]]:
    """{task: {loss, tokens, examples}} over the first `examples` examples of each task in a prepared folder."""
    total, tokens, count = defaultdict(float), defaultdict(int), defaultdict(int)
    for shard in open_folder(folder)[1]:
        for i in range(len(shard)):
            if count[shard.tasks[int(shard.task_ids[i])]] >= examples:
                continue
            sample = shard.sample(i)
            weights = sample.loss_mask[1:]
            total[sample.task] += float(loss(sample.ids[None, :-1], sample.ids[None, 1:], weights[None]))
            tokens[sample.task] += int(weights.sum())
            count[sample.task] += 1
    return {task: {"loss": total[task] / max(tokens[task], 1), "tokens": tokens[task], "examples": count[task]}
            for task in sorted(count)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="language-model folder (default: the bundled model)")
    p.add_argument("--data", nargs="+", required=True, help="folders written by `emu3 prepare`")
    p.add_argument("--examples", type=int, default=300, help="examples per task and folder (the first ones)")
    a = p.parse_args()
    lm = load_lm(model_or_bundled(a.model), dtype=torch.float32).eval()
    loss = LMLoss(lm, chunk=4096)
    print(json.dumps({"model": str(a.model or "bundled"), "examples": a.examples,
                      "folders": {folder: folder_losses(loss, folder, a.examples) for folder in a.data}}, indent=2))


if __name__ == "__main__":
    main()

"""Two CPU processes (torchrun, gloo, FSDP2) give the losses of one process with the same global batch."""

import os
import subprocess
import sys

from emu3.train.config import SFTConfig
from emu3.train.metrics import read_log
from emu3.train.sft import train_lm
from tests.test_train_utils import base_model, one_thread, t2i_dataset  # noqa: F401


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    t2i_dataset(tmp_path / "data", n=8)
    base_model(tmp_path / "base")
    common = ["--data", str(tmp_path / "data"), "--model", str(tmp_path / "base"), "--max-steps", "4",
              "--micro-batch-size", "2", "--warmup-steps", "1", "--lr", "1e-3", "--null-prompt-prob", "0.3",
              "--save-every", "2", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "emu3", "train", *common, "-o", str(tmp_path / "two"), "--grad-accum", "1"],
                         env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    # One process, two accumulated micro-batches of 2: the same 4-example global batches.
    cfg = SFTConfig(output=str(tmp_path / "one"), data=[str(tmp_path / "data")], model=str(tmp_path / "base"),
                    max_steps=4, micro_batch_size=2, grad_accum=2, warmup_steps=1, lr=1e-3, null_prompt_prob=0.3,
                    save_every=2, quiet=True)
    train_lm(cfg)
    one, two = read_log(tmp_path / "one" / "metrics.jsonl"), read_log(tmp_path / "two" / "metrics.jsonl")
    assert [r["tokens"] for r in one] == [r["tokens"] for r in two]
    for a, b in zip(one, two, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-4
    assert abs(one[-1]["loss"] - one[0]["loss"]) > 1e-3  # the runs did train
    # The sharded run's checkpoint holds the full (gathered) model, and both runs end with the same weights.
    from safetensors.torch import load_file

    w1 = load_file(str(tmp_path / "one" / "checkpoints" / "step-00000004" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "checkpoints" / "step-00000004" / "model.safetensors"))
    assert w1.keys() == w2.keys()
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-5

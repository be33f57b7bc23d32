"""The committed recipe of the bundled model runs end to end (tiny counts) and resumes without redoing work."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["--images", "6", "--vqa", "3", "--videos", "2", "--vq-steps", "2", "--vq-batch", "2",
        "--vq-autoencoder-steps", "1", "--decoder-steps", "1", "--redecoder-steps", "1", "--layers", "1",
        "--lm-steps", "2", "--retrain-steps", "2", "--lm-batch", "2",
        "--eval-prompts", "1", "--eval-questions", "1", "--eval-videos", "1", "--device", "cpu"]


def test_recipe_runs_every_stage_and_resumes(tmp_path, emu3_fixture):
    bpe = emu3_fixture / "Emu3-tiny" / "emu3.tiktoken"
    if not bpe.is_file():
        pytest.skip("the official BPE ranks file is not in the fixture")
    cmd = [sys.executable, str(REPO / "scripts" / "train_shapes.py"), "--work", str(tmp_path), "--bpe", str(bpe), *TINY]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert {"images", "answers", "videos", "tokenizer"} <= set(figures)
    assert (tmp_path / "bundle" / "model" / "config.json").is_file()
    assert (tmp_path / "bundle" / "vision-tokenizer" / "config.json").is_file()
    assert (tmp_path / "bundle" / "vision-tokenizer" / "code_aliases.json").is_file()  # the merged tokenizer
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "$ " not in again.stdout  # every training stage was already done: no command ran again

"""The committed recipe of the bundled model runs end to end (tiny counts) and resumes without redoing work."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

REPO = Path(__file__).resolve().parents[1]
TINY = ["--images", "6", "--vqa", "3", "--videos", "2", "--heldout-pictures", "3", "--heldout-clips", "1",
        "--vq-steps", "2", "--vq-batch", "2", "--vq-autoencoder-steps", "1", "--decoder-steps", "1",
        "--grow-steps", "1", "--grow-batch", "2", "--layers", "1", "--hidden", "64",
        "--lm-steps", "2", "--lm-batch", "2", "--more-steps", "2", "2", "--more-images", "2", "1",
        "--more-vqa", "1", "1", "--more-videos", "1", "1", "--deepen-layers", "1", "--deepen-steps", "2", "2",
        "--polish-steps", "2", "2", "--polish-lr", "2e-4", "--polish-min-lr", "2e-5", "--video-clips", "2",
        "--video-weight", "3", "2", "--polish-scenes", "3", "2", "1",
        "--ground-steps", "2", "2", "--ground-scenes", "2", "1", "2", "1", "1", "0", "3", "1", "--ground-lr", "2e-4",
        "--eval-prompts", "1", "--eval-questions", "1", "--eval-videos", "1", "--device", "cpu", "--dtype", "bf16"]


def test_recipe_runs_every_stage_and_resumes(tmp_path, emu3_fixture):
    bpe = emu3_fixture / "Emu3-tiny" / "emu3.tiktoken"
    if not bpe.is_file():
        pytest.skip("the official BPE ranks file is not in the fixture")
    cmd = [sys.executable, str(REPO / "scripts" / "train_shapes.py"), "--work", str(tmp_path), "--bpe", str(bpe), *TINY]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert {"images", "answers", "videos", "tokenizer"} <= set(figures)
    shipped = json.loads((tmp_path / "bundle" / "model" / "config.json").read_text())
    assert (shipped["num_hidden_layers"], shipped["hidden_size"], shipped["intermediate_size"]) == (3, 64, 192)
    assert (tmp_path / "lm-more" / "export" / "model" / "config.json").is_file()  # both continue rounds ran
    assert (tmp_path / "lm-more2" / "export" / "model" / "config.json").is_file()
    assert len((tmp_path / "data2" / "manifest.jsonl").read_text().splitlines()) == 2 + 1 + 1
    assert len((tmp_path / "data3" / "manifest.jsonl").read_text().splitlines()) == 1 + 1 + 1
    state = tmp_path / "lm-more2" / "checkpoints" / "step-00000002" / "trainer_state.json"
    trained_on = [Path(folder).name for folder, _ in json.loads(state.read_text())["fingerprint"]["data"]]
    assert trained_on == ["prepared", "prepared2", "prepared3"]  # round 2 trains on every prepared set so far
    bundled = json.loads((tmp_path / "bundle" / "source.json").read_text())
    state = tmp_path / "lm-deeper" / "checkpoints" / "step-00000002" / "trainer_state.json"
    assert [Path(folder).name for folder, _ in json.loads(state.read_text())["fingerprint"]["data"]] == trained_on
    polished = json.loads((tmp_path / "lm-polish" / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    deeper2 = json.loads((tmp_path / "lm-deeper2" / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    assert deeper2["config"]["model"] == str(tmp_path / "lm-deeper" / "export" / "model")  # round 2 grows round 1
    assert polished["config"]["model"] == str(tmp_path / "lm-deeper2" / "export" / "model")  # polish follows deepen
    assert (polished["config"]["lr"], polished["config"]["min_lr"], polished["config"]["warmup_steps"]) == (2e-4, 2e-5, 50)
    vq_state = json.loads((tmp_path / "vq" / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    assert polished["config"]["dtype"] == vq_state["config"]["dtype"] == "bf16"  # --dtype reaches every stage
    assert [(Path(folder).name, weight) for folder, weight in polished["fingerprint"]["data"]] == [
        *((name, 1.0) for name in trained_on), ("prepared-video", 3.0)]  # and the clips, drawn 3 times an epoch
    clips = [json.loads(line) for line in (tmp_path / "data-video" / "manifest.jsonl").read_text().splitlines()]
    assert len(clips) == 2 and all("frames" in c for c in clips)
    polished2 = json.loads((tmp_path / "lm-polish2" / "checkpoints" / "step-00000002" / "trainer_state.json")
                           .read_text())
    assert polished2["config"]["model"] == str(tmp_path / "lm-polish" / "export" / "model")  # round 2 follows round 1
    assert polished2["config"]["warmup_steps"] == 100
    assert [(Path(folder).name, weight) for folder, weight in polished2["fingerprint"]["data"]] == [
        *((name, 1.0) for name in trained_on), ("prepared-polish", 1.0), ("prepared-video", 2.0)]  # + fresh scenes
    fresh = [json.loads(line) for line in (tmp_path / "data-polish" / "manifest.jsonl").read_text().splitlines()]
    assert [sum("caption" in r and "image" in r for r in fresh), sum("turns" in r for r in fresh),
            sum("frames" in r for r in fresh)] == [3, 2, 1]  # --polish-scenes IMAGES VQA CLIPS
    grounded = json.loads((tmp_path / "lm-ground" / "checkpoints" / "step-00000002" / "trainer_state.json")
                          .read_text())
    assert grounded["config"]["model"] == str(tmp_path / "lm-polish2" / "export" / "model")  # after the polish
    config = grounded["config"]
    assert (config["lr"], config["min_lr"], config["warmup_steps"]) == (2e-4, 2e-5, 50)  # a tenth of --ground-lr
    assert [(Path(folder).name, weight) for folder, weight in grounded["fingerprint"]["data"]] == [
        ("prepared-ground", 1.0)]
    ground = [json.loads(line) for line in (tmp_path / "data-ground" / "manifest.jsonl").read_text().splitlines()]
    assert [sum("caption" in r and "image" in r for r in ground), sum("turns" in r for r in ground),
            sum("frames" in r for r in ground)] == [2, 1 + 2, 1]  # --ground-scenes IMAGES VQA PLACE CLIPS
    assert all(t["answer"] in ("yes", "no") for r in ground[3:5] for t in r["turns"])  # the place pictures
    grounded2 = json.loads((tmp_path / "lm-ground2" / "checkpoints" / "step-00000002" / "trainer_state.json")
                           .read_text())
    assert grounded2["config"]["model"] == str(tmp_path / "lm-ground" / "export" / "model")  # round 2 follows 1
    assert [(Path(folder).name, weight) for folder, weight in grounded2["fingerprint"]["data"]] == [
        ("prepared-ground2", 1.0)]  # its own fresh scenes alone
    ground2 = [json.loads(line) for line in (tmp_path / "data-ground2" / "manifest.jsonl").read_text().splitlines()]
    assert [sum("caption" in r and "image" in r for r in ground2), sum("turns" in r for r in ground2),
            sum("frames" in r for r in ground2)] == [1, 0 + 3, 1]  # the second four counts
    assert bundled["model"] == str(tmp_path / "lm-ground2" / "export" / "model")  # the last grounded LM is shipped
    assert (tmp_path / "bundle" / "vision-tokenizer" / "config.json").is_file()
    assert (tmp_path / "bundle" / "vision-tokenizer" / "code_aliases.json").is_file()  # the merged tokenizer
    assert bundled["vision-tokenizer"] == str(tmp_path / "vq-grown" / "export" / "vision-tokenizer")
    grown = json.loads((tmp_path / "bundle" / "vision-tokenizer" / "config.json").read_text())
    merged = json.loads((tmp_path / "vq-merged" / "config.json").read_text())
    assert grown["num_res_blocks"] == merged["num_res_blocks"] + 1  # the grow stage's deeper decoder is shipped
    with safe_open(str(tmp_path / "bundle" / "vision-tokenizer" / "model.safetensors"), "pt") as f:
        assert f.get_tensor("encoder.conv_in.weight").dtype == torch.float16  # the encoder at half the size
    pictures = [json.loads(line) for line in (tmp_path / "pictures" / "manifest.jsonl").read_text().splitlines()]
    assert len(pictures) == 11 + 4  # the data's pictures and clips, then the held-out ones
    assert all((tmp_path / "pictures" / p).is_file() for r in pictures for p in r.get("frames", [r.get("image")]))
    data = (tmp_path / "data" / "manifest.jsonl").read_text()
    assert "turns" in data and "caption" not in (tmp_path / "pictures" / "manifest.jsonl").read_text()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "$ " not in again.stdout  # every training stage was already done: no command ran again
    for changed in (["--deepen-layers", "2"], ["--grow-blocks", "2"]):  # not the old LM or tokenizer shipped
        other = subprocess.run([*cmd, *changed], capture_output=True, text=True, timeout=600)
        assert other.returncode == 1 and "remove that folder to train that stage again" in other.stderr
    shutil.rmtree(tmp_path / "lm" / "export")  # as if the LM stage had stopped after its last checkpoint
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "--resume" in resumed.stdout and (tmp_path / "lm" / "export" / "model" / "config.json").is_file()


ROUNDS = ["--more-vqa", "1", "--more-videos", "1"]
POSITIVE = "a positive count is a whole number of at least 1, got"  # the recipe's argparse types
COUNT = "a count is a whole number of at least 0, got"


@pytest.mark.parametrize("bad, named", [
    (["--more-steps", "2", "--more-images", "2", "1", *ROUNDS], "need one value per continue round"),
    (["--more-steps", "0", "--more-images", "1", *ROUNDS], f"argument --more-steps: {POSITIVE} '0'"),
    (["--deepen-steps", "7000", "0"], f"argument --deepen-steps: {POSITIVE} '0'"),
    (["--polish-steps", "5000", "0"], f"argument --polish-steps: {POSITIVE} '0'"),
    (["--images", "-1"], f"argument --images: {COUNT} '-1'"),
    (["--lm-batch", "0"], f"argument --lm-batch: {POSITIVE} '0'"),
    (["--eval-prompts", "ten"], f"argument --eval-prompts: {COUNT} 'ten'"),
    (["--video-clips", "-1"], f"argument --video-clips: {COUNT} '-1'"),
    (["--video-weight", "0", "3"], "--video-weight must be positive"),
    (["--video-weight", "2", "3", "3"], "one per polish round (2)"),
    (["--polish-scenes", "0", "0", "0"], "--polish-scenes: not all 0"),
    (["--ground-steps", "1500", "0"], f"argument --ground-steps: {POSITIVE} '0'"),
    (["--ground-steps", "1500", "1500", "700", "700"], "four counts per ground round (4)"),  # 3 default rounds
    (["--ground-scenes", "100", "100", "5", "10"], "four counts per ground round (3)"),
    (["--ground-steps", "9", "--ground-scenes", "100", "100", "0", "10"], "with some PLACE pictures"),
    (["--ground-steps", "9", "--ground-scenes", "100", "-1", "5", "10"], f"argument --ground-scenes: {COUNT} '-1'"),
])
def test_recipe_refuses_bad_counts_before_any_work(tmp_path, bad, named):
    cmd = [sys.executable, str(REPO / "scripts" / "train_shapes.py"), "--work", str(tmp_path / "w"), *bad,
           "--device", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and named in done.stderr
    assert not (tmp_path / "w").exists()

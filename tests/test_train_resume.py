"""Kill-and-resume: a run stopped after a checkpoint and resumed reproduces the uninterrupted losses
exactly (dropout, caption dropout and LoRA dropout included, and the vision tokenizer's dead-code
restarts); crashes never corrupt `latest`."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from emu3.checkpoint import load_lm
from emu3.cli import main
from emu3.train import state
from emu3.train.config import SFTConfig, VQTrainConfig
from emu3.train.lora import merge_lora
from emu3.train.metrics import read_log
from emu3.train.sft import train_lm
from emu3.train.vq import train_vq
from tests.test_train_utils import base_model, one_thread, t2i_dataset  # noqa: F401


class Killed(Exception):
    pass


def _cfg(tmp_path, out, **kw):
    return SFTConfig(output=str(tmp_path / out), data=[str(tmp_path / "data")], model=str(tmp_path / "base"),
                     max_steps=6, micro_batch_size=2, grad_accum=1, warmup_steps=2, lr=2e-3, save_every=2,
                     null_prompt_prob=0.5, lora_rank=2, lora_dropout=0.2, quiet=True, **kw)


def _kill_after(step):
    def on_step(metrics):
        if metrics["step"] == step:
            raise Killed
    return on_step


@pytest.fixture()
def setup(tmp_path):
    t2i_dataset(tmp_path / "data", n=6)
    base_model(tmp_path / "base", dropout=0.1)  # dropout on: the RNG states must be restored too
    return tmp_path


def test_resume_reproduces_the_uninterrupted_losses(setup):
    tmp_path = setup
    train_lm(_cfg(tmp_path, "full"))
    with pytest.raises(Killed):  # dies during step 5, after the checkpoint of step 4
        train_lm(_cfg(tmp_path, "cut"), on_step=_kill_after(5))
    assert state.latest(tmp_path / "cut").name == "step-00000004"
    # The interrupted run's latest checkpoint exports to a loadable model (LoRA merged).
    assert main(["export", str(tmp_path / "cut"), "-o", str(tmp_path / "step4"), "--json"]) == 0
    step4 = load_lm(tmp_path / "step4" / "model")
    ckpt = load_file(str(tmp_path / "cut" / "checkpoints" / "step-00000004" / "model.safetensors"))
    merged = merge_lora({k[len("lm."):]: v for k, v in ckpt.items()}, scale=32.0 / 2)
    assert all(torch.equal(v, merged[k]) for k, v in step4.state_dict().items())
    with (tmp_path / "cut" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "lo')  # a line the crash cut short
    train_lm(_cfg(tmp_path, "cut", resume=True))
    full = read_log(tmp_path / "full" / "metrics.jsonl")
    cut = read_log(tmp_path / "cut" / "metrics.jsonl")
    assert [r["step"] for r in cut] == [1, 2, 3, 4, 5, 6]  # step 5 was logged, then lost: only its redo is kept
    assert [r["loss"] for r in cut] == [r["loss"] for r in full]  # exactly
    assert len({r["loss"] for r in full}) == 6


def _vq_cfg(tmp_path):
    """A VQTrainConfig factory on four random 16-pixel pictures: cfg(output_name, **overrides)."""
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"image": f"{i}.png"}) + "\n" for i in range(4)))

    def cfg(out, **kw):
        settings = dict(preset="tiny", init=True, resolution=16, micro_batch_size=2, max_steps=6, save_every=2,
                        warmup_steps=0, lr=1e-3, quiet=True)
        return VQTrainConfig(output=str(tmp_path / out), data=str(tmp_path / "m.jsonl"), **{**settings, **kw})
    return cfg


def _vq_resumes_exactly(tmp_path, cfg, kill_after: int) -> None:
    """Train in one go, and again killed after step `kill_after` and resumed: the same metrics, exactly."""
    train_vq(cfg("full"))
    with pytest.raises(Killed):
        train_vq(cfg("cut"), on_step=_kill_after(kill_after))
    train_vq(cfg("cut", resume=True))
    keys = ("loss", "codebook_usage_run")
    full = [[r[k] for k in keys] for r in read_log(tmp_path / "full" / "metrics.jsonl")]
    resumed = {r["step"]: [r[k] for k in keys] for r in read_log(tmp_path / "cut" / "metrics.jsonl")}
    assert [resumed[s] for s in range(1, len(full) + 1)] == full


def test_vq_resume_restarts_the_same_dead_codes(tmp_path):
    cfg = _vq_cfg(tmp_path)
    # codes idle for 2 micro-batches at the step-4 checkpoint restart at step 5
    _vq_resumes_exactly(tmp_path, lambda out, **kw: cfg(out, restart_dead_codes=2, **kw), kill_after=5)
    # a checkpoint written before the counters were saved still resumes (every code counted as just hit)
    folder = state.latest(tmp_path / "cut")
    weights = load_file(str(folder / "model.safetensors"))
    assert weights.pop("idle").any() and weights.pop("seen").any()
    save_file(weights, str(folder / "model.safetensors"))
    longer = cfg("cut", resume=True, restart_dead_codes=2)
    longer.max_steps = 7
    assert train_vq(longer)["steps"] == 7


def test_vq_resume_inside_the_autoencoder_warmup(tmp_path):
    """The codebook has no optimizer state before its first step (after the warm-up): resuming from a checkpoint
    saved then crashed, and the codes seen were counted afresh."""
    cfg = _vq_cfg(tmp_path)
    _vq_resumes_exactly(tmp_path, lambda out, **kw: cfg(out, autoencoder_steps=3, max_steps=5, **kw), kill_after=3)


def test_a_crash_while_saving_leaves_latest_on_the_previous_checkpoint(setup, monkeypatch):
    tmp_path = setup
    with pytest.raises(Killed):
        train_lm(_cfg(tmp_path, "run"), on_step=_kill_after(3))
    real_save_file = state.save_file

    def dies_after_the_model(tensors, path, *a, **kw):
        if path.endswith("optimizer.safetensors"):
            raise Killed
        return real_save_file(tensors, path, *a, **kw)

    monkeypatch.setattr(state, "save_file", dies_after_the_model)
    with pytest.raises(Killed):  # resumes from step 2, dies while writing step 4
        train_lm(_cfg(tmp_path, "run", resume=True))
    monkeypatch.undo()
    root = tmp_path / "run" / "checkpoints"
    assert state.latest(tmp_path / "run").name == "step-00000002"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000002"]  # no half-written folder
    train_lm(_cfg(tmp_path, "run", resume=True))
    assert state.latest(tmp_path / "run").name == "step-00000006"


def test_resume_refuses_changed_batch_settings_or_a_missing_checkpoint(setup):
    tmp_path = setup
    with pytest.raises(state.ResumeError, match="no checkpoint"):
        train_lm(_cfg(tmp_path, "run", resume=True))
    with pytest.raises(Killed):
        train_lm(_cfg(tmp_path, "run"), on_step=_kill_after(2))
    bigger = _cfg(tmp_path, "run", resume=True)
    bigger.grad_accum = 2
    with pytest.raises(state.ResumeError, match="global_batch"):
        train_lm(bigger)


def test_resuming_a_finished_run_reports_its_last_step_and_a_shorter_run_is_refused(setup):
    tmp_path = setup
    first = train_lm(_cfg(tmp_path, "run"))
    again = train_lm(_cfg(tmp_path, "run", resume=True))  # nothing left to do: the last step's metrics
    assert again["steps"] == 6 and again["loss"] == first["loss"] and again["step"] == 6
    shorter = _cfg(tmp_path, "run", resume=True)
    shorter.max_steps = 4
    with pytest.raises(state.ResumeError, match="at step 6, past the 4 steps"):  # not "trained 4 steps"
        train_lm(shorter)


def test_a_corrupt_checkpoint_is_named_and_settings_are_checked_before_the_weights(setup):
    tmp_path = setup
    with pytest.raises(Killed):
        train_lm(_cfg(tmp_path, "run"), on_step=_kill_after(3))
    folder = state.latest(tmp_path / "run")
    (folder / "rng-0.safetensors").write_bytes((folder / "rng-0.safetensors").read_bytes()[:100])
    with pytest.raises(state.ResumeError, match="unreadable: rng-0.safetensors"):
        train_lm(_cfg(tmp_path, "run", resume=True))
    (folder / "model.safetensors").write_bytes(b"")
    bigger = _cfg(tmp_path, "run", resume=True)
    bigger.grad_accum = 2
    with pytest.raises(state.ResumeError, match="global_batch"):  # the settings, not the weights, are at fault
        train_lm(bigger)


def test_the_eta_of_a_resumed_run_counts_the_steps_of_this_process_only(monkeypatch, capsys):
    from types import SimpleNamespace

    from emu3.train import metrics

    clock = iter([100.0, 110.0])  # the progress line is created, then step 91 of 100 ends 10 s later
    monkeypatch.setattr(metrics, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    progress = metrics.Progress("train", 100, done=90)  # resumed at step 90
    progress.update(91)
    assert "91/100 eta 90s" in capsys.readouterr().err  # 9 steps left at 10 s a step (not 1 s)

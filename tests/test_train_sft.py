"""Language-model training: over-fitting then exact regeneration, LoRA merge-on-save, recipes,
the schedule, the exported folder and the command line."""

import json

import pytest
import torch
from safetensors.torch import load_file

from emu3.checkpoint import load_lm
from emu3.cli import main
from emu3.generation import ImageGrid, SamplingConfig, generate
from emu3.prompting import parse_image
from emu3.train.config import LoopConfig, SFTConfig, load_config
from emu3.train.metrics import read_log
from emu3.train.optim import lr_at
from emu3.train.sft import train_lm
from tests.test_train_utils import SMALL, base_model, one_thread, t2i_dataset  # noqa: F401


def _regenerate(lm, example, codes):
    """Greedy, grid-constrained generation from the example's prompt (caption + image header)."""
    h, w = codes.shape
    context = example.ids[: example.ids.index(SMALL.img) + 1]
    out = generate(lm, [context], max_new_tokens=h * (w + 1) + 3, sampling=SamplingConfig(greedy=True),
                   eos_id=SMALL.eos, pad_id=SMALL.pad,
                   grid=ImageGrid(torch.tensor([h]), torch.tensor([w]), SMALL))[0]
    return parse_image(out, SMALL)


def test_overfitting_then_greedy_generation_reproduces_the_training_codes(tmp_path):
    exs, codes = t2i_dataset(tmp_path / "data")
    base = base_model(tmp_path / "base")
    cfg = SFTConfig(output=str(tmp_path / "run"), data=[str(tmp_path / "data")], model=str(base),
                    lr=3e-3, min_lr=3e-4, warmup_steps=5, weight_decay=0.0, micro_batch_size=2, grad_accum=2,
                    max_steps=150, null_prompt_prob=0.0, save_every=1000, quiet=True)
    summary = train_lm(cfg)
    assert summary["loss"] < 0.02
    losses = [r["loss"] for r in read_log(tmp_path / "run" / "metrics.jsonl")]
    assert len(losses) == 150 and losses[0] > 2.5  # ln(64) at the start
    lm = load_lm(summary["export"])  # the exported original-layout folder
    for example, grid in zip(exs, codes, strict=True):
        assert torch.equal(_regenerate(lm, example, grid), grid)


def test_lora_trains_adapters_only_and_merges_on_save(tmp_path):
    from emu3.train.lora import LoRALinear, add_lora, merge_lora

    t2i_dataset(tmp_path / "data")
    base = load_lm(base_model(tmp_path / "base"))
    cfg = SFTConfig(output=str(tmp_path / "run"), data=[str(tmp_path / "data")], model=str(tmp_path / "base"),
                    lr=1e-2, warmup_steps=0, micro_batch_size=2, grad_accum=1, max_steps=4, lora_rank=4,
                    lora_alpha=8.0, lora_dropout=0.0, lora_targets=["q_proj", "v_proj"], quiet=True)
    summary = train_lm(cfg)
    merged = load_lm(summary["export"])
    ckpt = load_file(str(tmp_path / "run" / "checkpoints" / "step-00000004" / "model.safetensors"))
    base_state, merged_state = base.state_dict(), merged.state_dict()
    changed = {k for k in base_state if not torch.equal(base_state[k], merged_state[k])}
    assert changed == {f"model.layers.{i}.self_attn.{p}.weight" for i in range(2) for p in ("q_proj", "v_proj")}
    # The merged model computes what the adapted model computes.
    adapted = load_lm(tmp_path / "base")
    add_lora(adapted, ["q_proj", "v_proj"], 4, 8.0, 0.0, seed=0)
    adapted.load_state_dict({k[len("lm."):]: v for k, v in ckpt.items()})
    assert isinstance(adapted.model.layers[0].self_attn.q_proj, LoRALinear)
    ids = torch.tensor([[3, 30, 31, 6, 40, 5, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids), adapted.eval()(ids), atol=1e-5, rtol=1e-5)
    assert set(merge_lora(adapted.state_dict(), 2.0)) == set(base_state)


def test_learning_rate_schedule_is_the_official_warmup_cosine_to_minimum():
    cfg = LoopConfig(output="x", lr=1e-5, min_lr=1e-6, warmup_steps=30)
    assert [lr_at(s, cfg, 130) for s in (0, 15, 30)] == pytest.approx([0.0, 5e-6, 1e-5])
    assert lr_at(80, cfg, 130) == pytest.approx(5.5e-6)  # half way down the cosine
    assert lr_at(130, cfg, 130) == pytest.approx(1e-6) and lr_at(500, cfg, 130) == pytest.approx(1e-6)


def test_recipe_file_then_flags(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('output = "o"\ndata = ["d"]\npreset = "tiny"\ninit = true\nlr = 2e-4\nlora-rank = 8\n')
    cfg = load_config(SFTConfig, recipe, {"lr": 3e-4})
    assert (cfg.lr, cfg.lora_rank, cfg.preset, cfg.data) == (3e-4, 8, "tiny", ["d"])
    official = (30, 0.1, (0.9, 0.95), 1e-6, 5.0)
    assert (cfg.warmup_steps, cfg.weight_decay, cfg.betas, cfg.eps, cfg.max_grad_norm) == official
    (tmp_path / "r.json").write_text(json.dumps({"output": "o", "data": ["d"], "model": "m", "lerning_rate": 1}))
    with pytest.raises(ValueError, match="unknown SFTConfig settings \\['lerning_rate'\\]"):
        load_config(SFTConfig, tmp_path / "r.json")
    with pytest.raises(ValueError, match="add --init"):
        SFTConfig(output="o", data=["d"], preset="tiny")
    with pytest.raises(ValueError, match="exactly one of --model"):
        SFTConfig(output="o", data=["d"])


def test_recipe_values_of_the_wrong_type_are_refused_naming_the_setting(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('output = "o"\ndata = "d"\nmodel = "m"\nlr = 1\nbetas = [0.8, 0.9]\n')
    cfg = load_config(SFTConfig, recipe)
    assert (cfg.data, cfg.lr, cfg.betas) == (["d"], 1.0, (0.8, 0.9))  # one folder, not ["d"] letter by letter
    for line, message in [('max_steps = "10"', "'max_steps' in .* must be a whole number, got '10'"),
                          ("micro_batch_size = 2.5", "'micro_batch_size' .* whole number, got 2.5"),
                          ("init = 1", "'init' .* true or false"), ("betas = [0.9]", "'betas' .* list of 2 numbers"),
                          ("lora_targets = [1]", "'lora_targets' .* a string, got 1")]:
        recipe.write_text(f'output = "o"\ndata = ["d"]\nmodel = "m"\n{line}\n')
        with pytest.raises(ValueError, match=message):
            load_config(SFTConfig, recipe)


@pytest.mark.parametrize("command", ["train", "train-vq", "merge-codes"])
def test_a_negative_seed_is_refused_naming_the_flag(capsys, command):
    """numpy refused it only once the run had started, with "expected non-negative integer"."""
    with pytest.raises(SystemExit) as done:
        main([command, "--seed", "-1"])
    assert done.value.code == 2
    assert f"emu3 {command}: error: argument --seed: a seed is a whole number from 0" in capsys.readouterr().err


def test_a_negative_seed_in_a_recipe_is_refused_naming_the_setting():
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        LoopConfig(output="o", seed=-1)


def test_bad_data_is_refused_before_the_weights_are_read(tmp_path, monkeypatch):
    from emu3.train import sft
    from emu3.train.shards import DataError

    t2i_dataset(tmp_path / "data")
    base = base_model(tmp_path / "base")
    (tmp_path / "m.jsonl").write_text("{}\n")
    monkeypatch.setattr(sft.ckpt, "load_lm", lambda *a, **k: pytest.fail("the weights were read first"))
    for data, message in [(tmp_path / "m.jsonl", "is not a prepared data folder: it is a file"),
                          (f"{tmp_path / 'data'}:inf", "weight must be a positive number, got inf"),
                          (f"{tmp_path / 'data'}:0", "weight must be a positive number, got 0")]:
        with pytest.raises(DataError, match=message):
            train_lm(SFTConfig(output=str(tmp_path / "run"), data=[str(data)], model=str(base), quiet=True))
    t2i_dataset(tmp_path / "big", h=16, w=16)  # 16 x 17 visual tokens: longer than the 256-token context
    with pytest.raises(DataError, match="no usable training example in .*big .*longer than 256 tokens"):
        train_lm(SFTConfig(output=str(tmp_path / "run"), data=[str(tmp_path / "data"), str(tmp_path / "big")],
                           model=str(base), quiet=True))
    with pytest.raises(ValueError, match="fewer than one global batch"):
        train_lm(SFTConfig(output=str(tmp_path / "run"), data=[str(tmp_path / "data")], model=str(base),
                           micro_batch_size=8, quiet=True))


def test_train_command_from_a_preset_exports_a_model_that_generate_loads(tmp_path, emu3_fixture, capsys):
    """`--preset tiny --init` (the real vocabulary) on data prepared with the fixture's tokenizers; the
    export carries the tokenizer files and the vision tokenizer beside it, so `emu3 generate` runs."""
    from PIL import Image

    from emu3.train.config import PrepareConfig
    from emu3.train.prepare import prepare

    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "red.png")
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "red.png", "caption": "red"}) + "\n")
    prepare(PrepareConfig(manifest=str(tmp_path / "m.jsonl"), output=str(tmp_path / "data"),
                          model=str(emu3_fixture / "Emu3-tiny"), quiet=True), torch.device("cpu"))
    argv = ["train", "--preset", "tiny", "--init", "--data", str(tmp_path / "data"), "-o", str(tmp_path / "run"),
            "--micro-batch-size", "1", "--grad-accum", "1", "--max-steps", "2", "--no-gradient-checkpointing",
            "--max-seq-len", "2048", "--quiet", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["steps"] == 2 and out["export"] == str(tmp_path / "run" / "export" / "model")
    assert main(argv) == 2  # the output already holds checkpoints: --resume or another folder
    assert "pass --resume" in capsys.readouterr().err
    exported = tmp_path / "run" / "export"
    assert (exported / "model" / "emu3.tiktoken").is_file()
    config = json.loads((exported / "model" / "config.json").read_text())
    assert config["max_position_embeddings"] == 2048  # raised to --max-seq-len, as the official recipe does
    assert (exported / "vision-tokenizer" / "config.json").is_file()
    assert main(["generate", "red", "--model", str(exported / "model"), "--greedy", "--image-area", "1024",
                 "-o", str(tmp_path / "g.png"), "--quiet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["grid"] == [4, 4]


def test_the_shipped_recipes_parse():
    from emu3.train.config import VQTrainConfig
    from tests.conftest import REPO

    recipes = sorted((REPO / "configs").glob("train*/*.toml"))
    assert len(recipes) >= 4
    for path in recipes:  # the folder names the command: configs/train/, configs/train-vq/
        load_config(VQTrainConfig if path.parent.name == "train-vq" else SFTConfig, path)


@pytest.mark.parametrize("dtype, device, units, warned", [
    ("bf16", "cpu", False, True), ("bf16", "cpu", True, False), ("fp32", "cpu", False, False),
    ("auto", "cpu", False, False), ("bf16", "cuda", False, False)])
def test_bf16_on_a_cpu_without_bf16_units_warns(monkeypatch, dtype, device, units, warned):
    import warnings

    from emu3.train.loop import warn_if_bf16_is_slow

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: units, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_bf16_is_slow(LoopConfig(output="out", dtype=dtype), torch.device(device))
    assert [str(w.message) for w in caught if "AMX" in str(w.message)] == (
        ["--dtype bf16 on a CPU without AMX or AVX512-BF16: expect training far slower than with fp32 "
         "(measure with benchmarks/train_throughput.py --dtype bf16)"] if warned else [])


def test_data_tokenized_for_another_vocabulary_is_refused(tmp_path, emu3_fixture, capsys):
    """Data prepared with the compact Shapes tokenizer, trained on the full-vocabulary fixture model:
    the ids mean other tokens there, so training refuses it (an older folder too, by its vocabulary size)."""
    from PIL import Image

    from emu3.bundled import MODEL_DIR
    from emu3.train.config import PrepareConfig
    from emu3.train.prepare import prepare

    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "red.png")
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "red.png", "caption": "red"}) + "\n")
    prepare(PrepareConfig(manifest=str(tmp_path / "m.jsonl"), output=str(tmp_path / "data"), model=str(MODEL_DIR),
                          quiet=True), torch.device("cpu"))
    argv = ["train", "--model", str(emu3_fixture / "Emu3-tiny"), "--data", str(tmp_path / "data"),
            "-o", str(tmp_path / "run"), "--max-steps", "1", "--micro-batch-size", "1", "--grad-accum", "1",
            "--no-gradient-checkpointing", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("emu3 train: error: ") and "does not match" in err and str(MODEL_DIR) in err
    info = json.loads((tmp_path / "data" / "dataset.json").read_text())
    del info["tokenizer_fingerprint"]  # as written before fingerprints were recorded
    (tmp_path / "data" / "dataset.json").write_text(json.dumps(info))
    assert main(argv) == 2
    assert "does not match" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_summary_counts_left_out_examples_and_warns_of_a_task_left_without_any(tmp_path, capsys):
    from emu3.train import examples
    from emu3.train.shards import write_dataset
    from tests.test_train_utils import CharTokenizer

    exs, _ = t2i_dataset(tmp_path / "unused", n=4)
    clip = torch.zeros(2, 16, 16, dtype=torch.long)  # 2 x 16 x 17 visual tokens: longer than 256
    exs += [examples.text_to_visual(CharTokenizer(), "clip", [clip], task="video", vocab=SMALL)] * 2
    write_dataset(tmp_path / "data", exs, {"vocab_size": 64})
    base_model(tmp_path / "base")
    argv = ["train", "--model", str(tmp_path / "base"), "--data", str(tmp_path / "data"), "-o", str(tmp_path / "run"),
            "--max-steps", "1", "--micro-batch-size", "2", "--grad-accum", "1", "--no-save", "--quiet"]
    with pytest.warns(UserWarning, match="no example of task video is left to train on"):
        assert main(argv) == 0
    out = capsys.readouterr().out
    assert "trained 1 steps on 4 examples" in out and "skipped 2 examples: 2 longer than 256 tokens" in out
    assert "warning: no example of task video was trained on" in out

"""Vision-tokenizer training: the straight-through forward agrees with inference, gradients reach the
encoder, statistics are logged, and the saved folder is an official-layout tokenizer."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from emu3.checkpoint import load_vision_tokenizer
from emu3.cli import main
from emu3.train.config import VQTrainConfig
from emu3.train.metrics import read_log
from emu3.train.vq import VQLoss, train_vq
from tests.test_train_utils import one_thread  # noqa: F401


@pytest.fixture()
def manifest(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "caption": "ignored"}))
    (tmp_path / "bad.png").write_bytes(b"nope")
    lines += [json.dumps({"image": "bad.png"}), json.dumps({"image": "gone.png"})]
    (tmp_path / "vq.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "vq.jsonl"


def test_training_forward_matches_inference_and_is_straight_through(emu3_fixture):
    vq, _ = load_vision_tokenizer(emu3_fixture / "Emu3-VisionTokenizer-tiny")
    cfg = VQTrainConfig(output="x", data="x", vision_tokenizer="x")
    wrapper = VQLoss(vq, cfg).train()
    assert not vq.decoder.time_res_stack[0].norm1.training  # BatchNorm keeps the checkpoint statistics
    pixels = torch.rand(2, 3, 32, 40) * 2 - 1
    with torch.no_grad():
        expected_codes, expected_pixels = vq.encode(pixels), vq.decode(vq.encode(pixels))
        z = wrapper.encode(pixels)
        codes = vq.quantize(z)[:, 0]
        decoded = wrapper.decode(vq.quantize.lookup(codes[:, None]), image=True)
    assert torch.equal(codes, expected_codes)
    torch.testing.assert_close(decoded, expected_pixels)
    loss, stats, _ = wrapper(pixels)
    loss.backward()
    # The reconstruction gradient passes the quantizer: the encoder's first layer gets one.
    assert vq.encoder.conv_in.weight.grad.abs().sum() > 0 and vq.quantize.embedding.weight.grad.abs().sum() > 0
    assert set(stats) == {"recon", "codebook", "commit", "psnr"}


def test_dead_codes_move_onto_latents_of_the_batch():
    from emu3.config import vq_preset
    from emu3.vision import VisionTokenizer

    torch.manual_seed(0)
    vq = VisionTokenizer(vq_preset("tiny", codebook_size=64))
    cfg = VQTrainConfig(output="x", data="x", preset="tiny", init=True, restart_dead_codes=1)
    wrapper = VQLoss(vq, cfg).train()
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    wrapper(pixels)  # nothing is idle yet: no restart; the unpicked codes become idle
    before = vq.quantize.embedding.weight.detach().clone()
    idle = wrapper.idle > 0
    assert idle.any()
    wrapper(pixels)
    after = vq.quantize.embedding.weight.detach()
    assert torch.equal(after[~idle], before[~idle]) and not torch.equal(after[idle], before[idle])
    with torch.no_grad():
        z = wrapper.encode(pixels).permute(0, 1, 3, 4, 2).reshape(-1, 4)
    # every restarted code now sits on a latent of the batch
    assert torch.cdist(after[idle], z).min(dim=1).values.max() < 1e-3


def test_a_state_without_idle_counters_loads_with_every_code_just_hit(emu3_fixture):
    vq, _ = load_vision_tokenizer(emu3_fixture / "Emu3-VisionTokenizer-tiny")
    wrapper = VQLoss(vq, VQTrainConfig(output="x", data="x", vision_tokenizer="x", restart_dead_codes=5))
    state = wrapper.state_dict()
    assert torch.equal(state.pop("idle"), torch.zeros_like(wrapper.idle))  # the counters are checkpointed
    wrapper.idle.fill_(7)
    wrapper.load_state_dict(state)  # strict: a checkpoint written before the counters were saved
    assert not wrapper.idle.any()


def test_fine_tuning_logs_statistics_and_saves_an_official_folder(manifest, tmp_path, emu3_fixture):
    source = emu3_fixture / "Emu3-VisionTokenizer-tiny"
    before, _ = load_vision_tokenizer(source)
    cfg = VQTrainConfig(output=str(tmp_path / "run"), data=str(manifest), vision_tokenizer=str(source),
                        resolution=32, micro_batch_size=2, max_steps=3, warmup_steps=0, lr=1e-3, quiet=True)
    summary = train_vq(cfg)
    assert summary["records"] == 4 and summary["skipped"] == 2
    assert {s["reason"] for s in summary["skipped_records"]} == {"unreadable media", "missing file"}
    log = read_log(tmp_path / "run" / "metrics.jsonl")
    assert len(log) == 3
    keys = ("loss", "recon", "commit_loss", "codebook_loss", "psnr", "codebook_usage", "perplexity", "tokens_per_s")
    for key in keys:
        assert all(np.isfinite(r[key]) for r in log), key
    assert 0 < log[-1]["codebook_usage"] <= log[-1]["codebook_usage_run"] <= 1
    saved = tmp_path / "run" / "export" / "vision-tokenizer"
    config = json.loads((saved / "config.json").read_text())
    assert config["model_type"] == "Emu3VisionVQ" and (saved / "preprocessor_config.json").is_file()
    after, processor = load_vision_tokenizer(saved)
    assert after.config == before.config and processor.max_pixels == 4096
    old, new = before.state_dict(), after.state_dict()
    assert not torch.equal(old["encoder.conv_in.weight"], new["encoder.conv_in.weight"])
    bn = "encoder.time_res_stack.0.norm1.running_mean"
    assert torch.equal(old[bn], new[bn])  # frozen BatchNorm statistics
    Image.new("RGB", (48, 40), (10, 200, 30)).save(tmp_path / "in.png")
    assert main(["reconstruct", str(tmp_path / "in.png"), "--vision-tokenizer", str(saved), "-o",
                 str(tmp_path / "out.png"), "--json"]) == 0


def test_train_vq_command_from_a_preset_on_video_clips(tmp_path, capsys):
    rng = np.random.default_rng(1)
    (tmp_path / "clip").mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(tmp_path / "clip" / f"{i}.png")
    (tmp_path / "m.jsonl").write_text(json.dumps({"video": "clip"}) + "\n" + json.dumps({"image": "clip/0.png"}) + "\n")
    argv = ["train-vq", "--preset", "tiny", "--init", "--data", str(tmp_path / "m.jsonl"), "-o", str(tmp_path / "run"),
            "--resolution", "16", "--num-frames", "4", "--micro-batch-size", "1", "--grad-accum", "2",
            "--max-steps", "2", "--train-batchnorm", "--quiet", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["steps"] == 2 and np.isfinite(out["psnr"]) and out["tokens"] == 2 * 4  # 2 clips x 1 frame x 2x2
    vq, _ = load_vision_tokenizer(out["export"])
    assert vq.encode(torch.zeros(1, 4, 3, 16, 16)).shape == (1, 1, 2, 2)
    assert main(["export", str(tmp_path / "run" / "checkpoints" / "step-00000002"), "-o", str(tmp_path / "again")]) == 0
    again, _ = load_vision_tokenizer(tmp_path / "again" / "vision-tokenizer")
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in vq.state_dict().items())


def test_autoencoder_warmup_then_kmeans_codebook_on_crops(tmp_path, capsys):
    rng = np.random.default_rng(2)
    lines = []
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png"}))
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    argv = ["train-vq", "--preset", "tiny", "--init", "--data", str(tmp_path / "m.jsonl"), "-o", str(tmp_path / "run"),
            "--resolution", "32", "--crop", "16", "--autoencoder-steps", "2", "--micro-batch-size", "2",
            "--max-steps", "3", "--lr", "1e-3", "--quiet", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tokens"] == 2 * 4  # 16x16 crops of a factor-8 tokenizer: 2x2 codes each
    log = read_log(tmp_path / "run" / "metrics.jsonl")
    # steps 0 and 1 optimise the reconstruction alone (the codebook terms are logged, not trained)
    assert [abs(r["loss"] - r["recon"]) < 1e-6 for r in log[:2]] == [True, True]
    assert log[0]["codebook_loss"] > 0
    _, processor = load_vision_tokenizer(out["export"])
    assert processor.max_pixels == 32 * 32  # inference keeps the full resolution, not the crop


def test_train_vq_on_several_manifests(tmp_path, capsys):
    rng = np.random.default_rng(3)
    for name, count in (("a", 3), ("b", 2)):
        (tmp_path / name).mkdir()
        lines = []
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
            lines.append(json.dumps({"image": f"{i}.png"}))
        (tmp_path / name / "m.jsonl").write_text("\n".join(lines + [json.dumps({"image": "missing.png"})]) + "\n")
    argv = ["train-vq", "--preset", "tiny", "--init", "--data", str(tmp_path / "a" / "m.jsonl"),
            str(tmp_path / "b" / "m.jsonl"), "-o", str(tmp_path / "run"), "--resolution", "16",
            "--micro-batch-size", "5", "--max-steps", "1", "--quiet", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["records"] == 3 + 2 and out["tokens"] == 5 * 4  # one batch of every picture of both manifests
    assert [(s["manifest"], s["line"]) for s in out["skipped_records"]] == [
        (str(tmp_path / "a" / "m.jsonl"), 4), (str(tmp_path / "b" / "m.jsonl"), 3)]


def test_codebook_initialisation_puts_codes_on_latents(emu3_fixture):
    vq, _ = load_vision_tokenizer(emu3_fixture / "Emu3-VisionTokenizer-tiny")
    cfg = VQTrainConfig(data="m.jsonl", output="o", preset="tiny", init=True)
    loss = VQLoss(vq, cfg)
    batches = [torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(i)) * 2 - 1 for i in range(3)]
    loss.init_codebook(batches, seed=0)
    latents = torch.cat([loss.encode(b).permute(0, 1, 3, 4, 2).reshape(-1, vq.config.embed_dim) for b in batches])
    codebook = vq.quantize.embedding.weight.detach()
    # fewer latents (24) than codes: every latent becomes a code exactly, the other codes sit beside latents
    assert torch.cdist(latents, codebook).min(1).values.max() < 1e-3  # cdist rounds near 0
    assert torch.cdist(codebook, latents).min(1).values.max() < 1e-2 * float(latents.detach().std())
    assert len(torch.unique(codebook, dim=0)) == len(codebook)


@pytest.mark.parametrize("flags, message", [
    (["--crop", "40"], "crop must be between 0 and resolution"),
    (["--crop", "12"], "crop 12 must be a multiple of the spatial factor 8"),
    (["--autoencoder-steps", "-1"], "autoencoder_steps must be >= 0"),
    (["--autoencoder-steps", "1"], "autoencoder_steps (1) must be fewer than the run's 1 steps"),  # random codebook
    (["--export-encoder-dtype", "bf16"], "export_encoder_dtype must be fp32 or fp16"),
    (["--restart-dead-codes", "-1"], "restart_dead_codes must be >= 0"),  # -1 would move every code each batch
])
def test_bad_crop_and_warmup_flags(tmp_path, capsys, manifest, flags, message):
    argv = ["train-vq", "--preset", "tiny", "--init", "--data", str(manifest), "-o", str(tmp_path / "run"),
            "--resolution", "32", "--max-steps", "1", "--quiet", *flags]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("batchnorm", [[], ["--train-batchnorm"]])
def test_decoder_only_keeps_encoder_and_codebook(manifest, tmp_path, emu3_fixture, capsys, batchnorm):
    """Encoder weights and BatchNorm statistics included: with --train-batchnorm only the decoder's move."""
    folder = emu3_fixture / "Emu3-VisionTokenizer-tiny"
    argv = ["train-vq", "--vision-tokenizer", str(folder), "--decoder-only", "--data", str(manifest),
            "-o", str(tmp_path / "run"), "--resolution", "16", "--max-steps", "2", "--lr", "1e-2", "--quiet", "--json",
            *batchnorm]
    assert main(argv) == 0
    before, _ = load_vision_tokenizer(folder)
    after, _ = load_vision_tokenizer(json.loads(capsys.readouterr().out)["export"])
    old, new = before.state_dict(), after.state_dict()
    frozen = [k for k in old if k.startswith(("encoder.", "quant_conv.", "quantize."))]
    assert any("running_mean" in k for k in frozen) and all(torch.equal(old[k], new[k]) for k in frozen)
    assert any(not torch.equal(old[k], new[k]) for k in old if k.startswith("decoder."))
    statistics_moved = any(not torch.equal(old[k], new[k]) for k in old if k.startswith("decoder.") and "running" in k)
    assert statistics_moved == bool(batchnorm)
    assert main(argv[:3] + ["--init", *argv[3:]]) == 2


@pytest.mark.parametrize("first, resumed", [(["--decoder-only"], []), ([], ["--decoder-only"])])
def test_resume_refuses_switching_decoder_only(manifest, tmp_path, emu3_fixture, capsys, first, resumed):
    """Switched, a resumed run trained another part than its checkpoint did and exported code aliases
    (kept by decoder-only tuning, dropped otherwise) that did not match its weights."""
    argv = ["train-vq", "--vision-tokenizer", str(emu3_fixture / "Emu3-VisionTokenizer-tiny"), "--data",
            str(manifest), "-o", str(tmp_path / "run"), "--resolution", "16", "--save-every", "1", "--quiet"]
    assert main([*argv, "--max-steps", "1", *first]) == 0
    capsys.readouterr()
    assert main([*argv, "--max-steps", "2", "--resume", *resumed]) == 2
    assert "settings it was trained with changed (['decoder_only'])" in capsys.readouterr().err
    assert main([*argv, "--max-steps", "2", "--resume", *first]) == 0


def test_fp16_encoder_export_halves_the_encoder_and_keeps_the_codebook(manifest, tmp_path, emu3_fixture, capsys):
    from safetensors import safe_open

    folder = emu3_fixture / "Emu3-VisionTokenizer-tiny"
    argv = ["train-vq", "--vision-tokenizer", str(folder), "--decoder-only", "--data", str(manifest), "-o",
            str(tmp_path / "run"), "--resolution", "16", "--max-steps", "1", "--export-dtype", "bf16",
            "--export-encoder-dtype", "fp16", "--quiet", "--json"]
    assert main(argv) == 0
    export = json.loads(capsys.readouterr().out)["export"]
    with safe_open(f"{export}/model.safetensors", "pt") as f:
        dtypes = {k: f.get_tensor(k).dtype for k in f.keys() if f.get_tensor(k).is_floating_point()}
    side = lambda *prefixes: {d for k, d in dtypes.items() if k.startswith(prefixes)}  # noqa: E731
    assert side("encoder.", "quant_conv.") == {torch.float16}
    assert side("quantize.") == {torch.float32} and side("decoder.", "post_quant_conv.") == {torch.bfloat16}
    before, _ = load_vision_tokenizer(folder)
    after, _ = load_vision_tokenizer(export)
    assert next(after.encoder.parameters()).dtype == torch.float32  # loaded back in fp32
    weight = before.encoder.conv_in.weight
    assert torch.equal(after.encoder.conv_in.weight, weight.half().float()) and not torch.equal(
        after.encoder.conv_in.weight, weight)
    pixels = torch.rand(8, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert (before.encode(pixels) == after.encode(pixels)).float().mean() > 0.95


def test_the_printed_summary_names_the_skipped_records(manifest, tmp_path, capsys):
    argv = ["train-vq", "--preset", "tiny", "--init", "--data", str(manifest), "-o", str(tmp_path / "run"),
            "--resolution", "16", "--micro-batch-size", "2", "--max-steps", "1", "--no-save", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "trained 1 steps on 4 records" in out and "skipped 2 records: 1 missing file, 1 unreadable media" in out
    assert f"{manifest} line 6: missing file: " in out and f"{manifest} line 5: unreadable media: " in out


def test_a_decompression_bomb_is_skipped_as_unreadable(tmp_path):
    from emu3.train.vq import read_media

    Image.new("1", (14000, 14000)).save(tmp_path / "big.png")  # over twice PIL's pixel limit: it refuses to open it
    Image.new("RGB", (16, 16)).save(tmp_path / "ok.png")
    (tmp_path / "m.jsonl").write_text('{"image": "big.png"}\n{"image": "ok.png"}\n')
    records, skipped = read_media(str(tmp_path / "m.jsonl"))
    assert len(records) == 1 and [s["reason"] for s in skipped] == ["unreadable media"]


def test_an_export_over_the_tokenizer_being_tuned_is_refused_before_training(manifest, tmp_path, emu3_fixture,
                                                                               capsys, monkeypatch):
    import shutil

    from emu3.train import vq as vq_training

    monkeypatch.setattr(vq_training, "fit", lambda *a, **k: pytest.fail("trained before refusing"))
    tuned = tmp_path / "run" / "export" / "vision-tokenizer"
    shutil.copytree(emu3_fixture / "Emu3-VisionTokenizer-tiny", tuned)
    argv = ["train-vq", "--vision-tokenizer", str(tuned), "--data", str(manifest), "-o", str(tmp_path / "run"),
            "--resolution", "16", "--max-steps", "1", "--quiet"]
    assert main(argv) == 2
    assert "would overwrite" in capsys.readouterr().err

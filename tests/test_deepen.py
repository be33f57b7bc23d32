"""Growing trained models: a vision tokenizer by residual blocks (the same codes and pictures, its new
blocks train, `emu3 train-vq --add-res-blocks` exports the grown config) and a language model by decoder
layers (the same logits, its new layers train, `emu3 train --add-layers` exports the deeper model)."""

import json
import re

import pytest
import torch
from safetensors import safe_open

from emu3.checkpoint import load_lm, load_vision_tokenizer
from emu3.cli import main
from emu3.train.deepen import deepen, deepen_lm, layer_plan
from tests.test_train_utils import base_model, one_thread, t2i_dataset  # noqa: F401
from tests.test_train_vq import manifest  # noqa: F401


def test_grown_tokenizer_computes_the_same_codes_and_pictures(emu3_fixture):
    vq, _ = load_vision_tokenizer(emu3_fixture / "Emu3-VisionTokenizer-tiny")
    grown = deepen(vq, 1)
    assert grown.config.num_res_blocks == vq.config.num_res_blocks + 1
    assert len(grown.decoder.up[3].attn) == len(grown.decoder.up[3].block) == 3  # level 3 has attention
    assert sum(p.numel() for p in grown.parameters()) > sum(p.numel() for p in vq.parameters())
    torch.manual_seed(0)
    image, clip = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(1, 8, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        for pixels in (image, clip):
            codes = vq.encode(pixels)
            assert torch.equal(grown.encode(pixels), codes)
            torch.testing.assert_close(grown.decode(codes), vq.decode(codes), rtol=0, atol=1e-6)
    new_conv = grown.decoder.up[0].block[2].conv2.weight
    assert not new_conv.any() and grown.decoder.up[0].block[2].conv1.weight.any()
    assert deepen(vq, 0) is vq
    with pytest.raises(ValueError, match=">= 0"):
        deepen(vq, -1)


def test_the_new_blocks_learn(emu3_fixture):
    grown = deepen(load_vision_tokenizer(emu3_fixture / "Emu3-VisionTokenizer-tiny")[0], 1)
    codes = grown.encode(torch.rand(1, 3, 32, 32) * 2 - 1)
    grown.decode(codes).square().mean().backward()
    assert grown.decoder.up[0].block[2].conv2.weight.grad.abs().sum() > 0


def test_decoder_only_training_of_a_grown_tokenizer_keeps_codes(manifest, tmp_path, emu3_fixture, capsys):  # noqa: F811
    folder = emu3_fixture / "Emu3-VisionTokenizer-tiny"
    argv = ["train-vq", "--vision-tokenizer", str(folder), "--decoder-only", "--add-res-blocks", "1",
            "--export-dtype", "bf16", "--data", str(manifest), "-o", str(tmp_path / "run"), "--resolution", "16",
            "--max-steps", "2", "--lr", "1e-2", "--quiet", "--json"]
    assert main(argv) == 0
    export = json.loads(capsys.readouterr().out)["export"]
    assert json.loads((tmp_path / "run/export/vision-tokenizer/config.json").read_text())["num_res_blocks"] == 2
    with safe_open(f"{export}/model.safetensors", "pt") as f:
        dtypes = {k: f.get_tensor(k).dtype for k in f.keys() if f.get_tensor(k).is_floating_point()}
    assert {d for k, d in dtypes.items() if k.startswith(("decoder.", "post_quant_conv."))} == {torch.bfloat16}
    new_encoder_blocks = re.compile(r"encoder\.down\.\d\.(block|attn)\.1\.")  # identity: stored rounded too
    assert {d for k, d in dtypes.items() if new_encoder_blocks.match(k)} == {torch.bfloat16}
    assert {d for k, d in dtypes.items() if k.startswith(("encoder.", "quant_conv.", "quantize."))
            and not new_encoder_blocks.match(k)} == {torch.float32}
    before, _ = load_vision_tokenizer(folder)
    after, _ = load_vision_tokenizer(export)
    assert after.config.num_res_blocks == 2 and next(after.parameters()).dtype == torch.float32
    assert after.decoder.up[0].block[2].conv2.weight.any()  # the new decoder blocks trained
    assert not after.encoder.down[0].block[1].conv2.weight.any()  # the new encoder blocks stay the identity
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(before.encode(pixels), after.encode(pixels))


@pytest.mark.parametrize("extra", [["--init"], ["--add-res-blocks", "-1"]])
def test_bad_growth_flags(manifest, tmp_path, emu3_fixture, capsys, extra):  # noqa: F811
    argv = ["train-vq", "--vision-tokenizer", str(emu3_fixture / "Emu3-VisionTokenizer-tiny"), "--add-res-blocks",
            "1", *extra, "--data", str(manifest), "-o", str(tmp_path / "run"), "--quiet"]
    assert main(argv) == 2
    assert "add_res_blocks" in capsys.readouterr().err


def test_layer_plan_spreads_new_layers_evenly():
    assert layer_plan(4, 4) == [(0, False), (0, True), (1, False), (1, True), (2, False), (2, True), (3, False),
                                (3, True)]
    assert layer_plan(4, 1) == [(0, False), (1, False), (2, False), (3, False), (3, True)]
    assert layer_plan(4, 2) == [(0, False), (1, False), (1, True), (2, False), (3, False), (3, True)]
    assert [old for old, new in layer_plan(2, 5) if new] == [0, 0, 1, 1, 1]
    assert layer_plan(3, 0) == [(0, False), (1, False), (2, False)]
    with pytest.raises(ValueError, match="extra >= 0"):
        layer_plan(4, -1)


def test_grown_lm_computes_the_same_logits_and_its_new_layers_learn(tmp_path):
    lm = load_lm(base_model(tmp_path / "base")).train()  # 2 layers; train mode with dropout 0
    grown = deepen_lm(lm, 3)
    assert grown.config.num_layers == 5 and grown.training
    assert [layer.index for layer in grown.model.layers] == list(range(5))
    new = grown.model.layers[1]  # a copy of layer 0 (layer_plan(2, 3))
    assert not new.self_attn.o_proj.weight.any() and not new.mlp.down_proj.weight.any()
    assert torch.equal(new.self_attn.q_proj.weight, lm.model.layers[0].self_attn.q_proj.weight)
    assert torch.equal(grown.model.layers[2].mlp.down_proj.weight, lm.model.layers[1].mlp.down_proj.weight)
    ids = torch.randint(8, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(grown(ids), lm(ids), rtol=0, atol=1e-6)
    grown(ids).logsumexp(-1).mean().backward()
    assert new.self_attn.o_proj.weight.grad.abs().sum() > 0 and new.mlp.down_proj.weight.grad.abs().sum() > 0
    assert deepen_lm(lm, 0) is lm
    with pytest.raises(ValueError, match="extra >= 0"):
        deepen_lm(lm, -1)


def test_train_add_layers_exports_the_deeper_model(tmp_path, capsys):
    t2i_dataset(tmp_path / "data")
    base = base_model(tmp_path / "base")
    argv = ["train", "--model", str(base), "--add-layers", "2", "--data", str(tmp_path / "data"), "-o",
            str(tmp_path / "run"), "--max-steps", "2", "--micro-batch-size", "2", "--grad-accum", "1", "--lr", "1e-2",
            "--quiet", "--json"]
    assert main(argv) == 0
    export = json.loads(capsys.readouterr().out)["export"]
    trained = load_lm(export)
    assert trained.config.num_layers == 4
    assert trained.model.layers[3].self_attn.o_proj.weight.any()  # a new layer trained
    assert main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "again"), "--json"]) == 0
    assert load_lm(json.loads(capsys.readouterr().out)["export"]).config.num_layers == 4
    for bad in (["--init"], ["--lora-rank", "4"]):
        assert main(argv[:-2] + bad + ["-o", str(tmp_path / "bad")]) != 0
    assert "excludes --init, --preset and LoRA" in capsys.readouterr().err

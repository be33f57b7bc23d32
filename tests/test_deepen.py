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
from emu3.train.deepen import deepen, deepen_lm, identity_blocks, layer_plan
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
    new_encoder_blocks = re.compile(r"encoder\.(down\.\d\.(block|attn)|time_res_stack)\.1\.")  # identity: rounded too
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
    assert torch.equal(grown(ids), lm(ids))
    grown(ids).logsumexp(-1).mean().backward()
    assert new.self_attn.o_proj.weight.grad.abs().sum() > 0 and new.mlp.down_proj.weight.grad.abs().sum() > 0
    assert deepen_lm(lm, 0) is lm
    with pytest.raises(ValueError, match="extra >= 0"):
        deepen_lm(lm, -1)


def test_train_add_layers_exports_the_deeper_model_and_resumes(tmp_path, capsys):
    t2i_dataset(tmp_path / "data")
    base = base_model(tmp_path / "base")

    def train(steps: int, *extra: str) -> int:
        return main(["train", "--model", str(base), "--data", str(tmp_path / "data"), "-o", str(tmp_path / "run"),
                     "--max-steps", str(steps), "--micro-batch-size", "2", "--grad-accum", "1", "--lr", "1e-2",
                     "--quiet", "--json", *extra])

    assert train(2, "--add-layers", "2") == 0
    trained = load_lm(json.loads(capsys.readouterr().out)["export"])
    assert trained.config.num_layers == 4
    assert trained.model.layers[3].self_attn.o_proj.weight.any()  # a new layer trained
    assert main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "again"), "--json"]) == 0
    assert load_lm(json.loads(capsys.readouterr().out)["export"]).config.num_layers == 4
    assert train(3, "--add-layers", "2", "--resume") == 0  # the grown model is built again, then filled
    assert load_lm(json.loads(capsys.readouterr().out)["export"]).config.num_layers == 4
    assert train(4, "--resume") == 2  # without --add-layers the checkpoint does not fit
    assert "does not fit the model being trained" in capsys.readouterr().err
    for bad in (["--init"], ["--lora-rank", "4"]):
        assert train(2, "--add-layers", "2", *bad) == 2
        assert "excludes --init, --preset and LoRA" in capsys.readouterr().err


def test_identity_blocks_are_those_whose_branch_is_zero_without_a_shortcut():
    w = torch.ones(2, 2, 3, 3)
    state = {"e.a.conv1.weight": w, "e.a.conv2.weight": 0 * w, "e.a.conv2.bias": torch.zeros(2),  # identity
             "e.b.conv2.weight": 0 * w, "e.b.conv2.bias": torch.ones(2),  # adds a bias
             "e.c.conv2.weight": 0 * w, "e.c.nin_shortcut.weight": w,  # maps its input through a shortcut
             "e.t.conv2.conv.weight": 0 * w, "e.t.conv2.conv.bias": torch.zeros(2),  # a temporal block
             "e.n.proj_out.weight": 0 * w, "e.m.proj_out.weight": w}
    assert identity_blocks(state) == ("e.a.", "e.t.", "e.n.")


def test_identity_blocks_finds_exactly_the_blocks_deepen_adds(emu3_fixture):
    vq, _ = load_vision_tokenizer(emu3_fixture / "Emu3-VisionTokenizer-tiny")
    old = vq.state_dict()
    new = {re.match(r"(.*\.(?:block|attn|time_res_stack)\.\d+\.)", key).group(1)
           for key in deepen(vq, 1).state_dict() if key not in old}
    assert len(new) == 12 and "encoder.time_res_stack.1." in new and "decoder.up.3.attn.2." in new
    assert set(identity_blocks(deepen(vq, 1).state_dict())) == new


@pytest.mark.parametrize("dtype, encoder_dtype, identity", [("fp32", "fp16", torch.float16),
                                                            ("bf16", "fp32", torch.bfloat16),
                                                            ("bf16", "fp16", torch.bfloat16)])
def test_export_stores_identity_blocks_in_the_narrower_dtype(emu3_fixture, tmp_path, dtype, encoder_dtype, identity):
    from emu3.train.export import save_vision_tokenizer
    from emu3.vision import ImageProcessor

    grown = deepen(load_vision_tokenizer(emu3_fixture / "Emu3-VisionTokenizer-tiny")[0], 1)
    state = grown.state_dict()
    blocks = identity_blocks(state)
    folder = save_vision_tokenizer(state, grown.config, ImageProcessor(), tmp_path / "vq", dtype=dtype,
                                   encoder_dtype=encoder_dtype)
    with safe_open(f"{folder}/model.safetensors", "pt") as f:
        dtypes = {k: f.get_tensor(k).dtype for k in f.keys() if f.get_tensor(k).is_floating_point()}
    assert {d for k, d in dtypes.items() if k.startswith(blocks)} == {identity}
    named = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    rest = lambda side: {d for k, d in dtypes.items() if k.startswith(side) and not k.startswith(blocks)}  # noqa: E731
    assert rest("encoder.") == {named[encoder_dtype]} and rest("decoder.") == {named[dtype]}

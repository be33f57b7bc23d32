"""Growing a vision tokenizer by residual blocks: the grown tokenizer computes the same codes and
pictures, its new blocks train, and `emu3 train-vq --add-res-blocks` exports the grown config."""

import json

import pytest
import torch
from safetensors import safe_open

from emu3.checkpoint import load_vision_tokenizer
from emu3.cli import main
from emu3.train.deepen import deepen
from tests.test_train_utils import one_thread  # noqa: F401
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
    assert {d for k, d in dtypes.items() if k.startswith(("encoder.", "quant_conv.", "quantize."))} == {torch.float32}
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

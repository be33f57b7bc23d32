"""Key maps between the original Emu3 checkpoint names and the transformers "-hf" names.

Coverage and reversibility are checked on our VisionTokenizer's keys and the spec's LM names; a
tiny `transformers.Emu3ForConditionalGeneration` saved with `save_pretrained` is the independent
oracle for the on-disk names, and its `Emu3VQVAE` for the numerics after loading through the map.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from emu3.config import vq_preset
from emu3.keymap import (
    hf_state_dict_to_original, hf_tensor_to_original, hf_to_original, original_state_dict_to_hf,
    original_tensor_to_hf, original_to_hf,
)
from emu3.vision import VisionTokenizer

from tests.conftest import HF_NUM_LAYERS as NUM_LAYERS

# Tiny LM shapes: hidden 32, 4 heads of 8, 2 KV heads, MLP 64, vocabulary 300 (spec 9.1 names).
LM_SHAPES = {"model.embed_tokens.weight": (300, 32), "model.norm.weight": (32,), "lm_head.weight": (300, 32)}
for _i in range(NUM_LAYERS):
    LM_SHAPES.update({
        f"model.layers.{_i}.self_attn.q_proj.weight": (32, 32),
        f"model.layers.{_i}.self_attn.k_proj.weight": (16, 32),
        f"model.layers.{_i}.self_attn.v_proj.weight": (16, 32),
        f"model.layers.{_i}.self_attn.o_proj.weight": (32, 32),
        f"model.layers.{_i}.mlp.gate_proj.weight": (64, 32),
        f"model.layers.{_i}.mlp.up_proj.weight": (64, 32),
        f"model.layers.{_i}.mlp.down_proj.weight": (32, 64),
        f"model.layers.{_i}.input_layernorm.weight": (32,),
        f"model.layers.{_i}.post_attention_layernorm.weight": (32,),
    })


@pytest.fixture(scope="module")
def vq_state():
    return VisionTokenizer(vq_preset("tiny")).state_dict()


def test_vq_keys_round_trip_and_injective(vq_state):
    hf_keys = [original_to_hf(k) for k in vq_state]
    assert len(set(hf_keys)) == len(vq_state)
    assert all(k.startswith("vqmodel.") for k in hf_keys)
    assert [hf_to_original(k) for k in hf_keys] == list(vq_state)
    # Spot checks of the spec's examples (9.3).
    for original, hf in [
        ("encoder.down.3.attn.0.q.weight", "vqmodel.encoder.down_block.down.3.attn.0.q_proj.weight"),
        ("encoder.down.3.attn.0.norm.weight", "vqmodel.encoder.down_block.down.3.attn_norms.0.weight"),
        ("encoder.mid.attn_1.norm.weight", "vqmodel.encoder.middle_block.attn_norm.weight"),
        ("decoder.up.3.attn.1.norm.conv_y.weight", "vqmodel.decoder.up_block.up.3.attn_norms.1.conv_y.weight"),
        ("decoder.mid.block_1.norm1.norm_layer.weight", "vqmodel.decoder.middle_block.block_1.norm1.norm_layer.weight"),
        ("decoder.mid.attn_1.proj_out.bias", "vqmodel.decoder.middle_block.attn_1.out_proj.bias"),
        ("quantize.embedding.weight", "vqmodel.quantize.embedding.weight"),
        ("post_quant_conv.conv.weight", "vqmodel.post_quant_conv.conv.weight"),
    ]:
        assert original in vq_state
        assert original_to_hf(original) == hf and hf_to_original(hf) == original


def test_lm_keys_round_trip_and_injective():
    hf_keys = [original_to_hf(k) for k in LM_SHAPES]
    assert len(set(hf_keys)) == len(LM_SHAPES)
    assert original_to_hf("lm_head.weight") == "text_model.lm_head.weight"
    q_proj = "model.layers.1.self_attn.q_proj.weight"
    assert original_to_hf(q_proj) == "text_model." + q_proj
    assert [hf_to_original(k) for k in hf_keys] == list(LM_SHAPES)


def test_in_memory_transformers5_names():
    assert hf_to_original("model.text_model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight"
    assert hf_to_original("model.text_model.embed_tokens.weight") == "model.embed_tokens.weight"
    assert hf_to_original("lm_head.weight") == "lm_head.weight"
    assert hf_to_original("model.vqmodel.decoder.up_block.up.3.attn_norms.2.conv_b.bias") == \
        "decoder.up.3.attn.2.norm.conv_b.bias"


@pytest.mark.parametrize("key", [
    "vision_tower.weight",
    "vqmodel.encoder.mid.block_1.conv1.weight",  # an original-style name under the hf prefix
    "model.layers.0.self_attn.q_proj.weight",    # an original name is not an hf name
    "text_model.lm_head.bias",
])
def test_unknown_hf_keys_raise(key):
    with pytest.raises(KeyError, match=key.replace(".", r"\.")):
        hf_to_original(key)


def test_unknown_original_keys_raise():
    with pytest.raises(KeyError, match="vqmodel"):
        original_to_hf("vqmodel.encoder.conv_in.weight")


def test_tensor_transforms(vq_state):
    weight = torch.randn(128, 128, 1, 1)
    hf_key = "vqmodel.encoder.middle_block.attn_1.q_proj.weight"
    linear = original_tensor_to_hf("encoder.mid.attn_1.q.weight", weight)
    assert linear.shape == (128, 128)
    assert torch.equal(hf_tensor_to_original(hf_key, linear), weight)
    # Either naming of the key works (checkpoint loading renames first, then converts).
    assert torch.equal(hf_tensor_to_original("encoder.mid.attn_1.q.weight", linear), weight)
    assert torch.equal(original_tensor_to_hf(hf_key, weight), linear)
    assert original_tensor_to_hf("encoder.mid.attn_1.q.bias", torch.randn(128)).shape == (128,)
    assert hf_tensor_to_original("text_model.model.layers.0.self_attn.q_proj.weight", torch.randn(32, 32)).shape == \
        (32, 32)
    with pytest.raises(ValueError, match="Linear"):
        hf_tensor_to_original(hf_key, weight)
    with pytest.raises(ValueError, match="1x1 conv"):
        original_tensor_to_hf("decoder.up.3.attn.0.proj_out.weight", linear)
    hf_state = original_state_dict_to_hf(vq_state)
    assert hf_state["vqmodel.decoder.up_block.up.3.attn.0.out_proj.weight"].shape == (128, 128)
    converted = hf_state_dict_to_original(hf_state)
    assert list(converted) == list(vq_state)
    assert all(torch.equal(converted[k], v) for k, v in vq_state.items())


# ---------------------------------------------------------------- transformers as the oracle

def test_on_disk_names_map_to_ours(hf_checkpoint, vq_state):
    model, folder = hf_checkpoint
    on_disk = load_file(folder / "model.safetensors")
    assert any(k.startswith("text_model.model.") for k in on_disk)  # the legacy on-disk layout
    converted = hf_state_dict_to_original(on_disk)
    expected = set(vq_state) | set(LM_SHAPES)
    assert set(converted) == expected
    for key, tensor in converted.items():
        want = tuple(vq_state[key].shape) if key in vq_state else LM_SHAPES[key]
        assert tuple(tensor.shape) == want, key
    # The transformers 5.x in-memory names reach the same keys.
    assert {hf_to_original(k) for k in model.state_dict()} == expected
    # And our names map forward onto exactly the on-disk names.
    assert {original_to_hf(k) for k in expected} == set(on_disk)


@torch.no_grad()
def test_numerics_match_transformers_vqvae(hf_checkpoint):
    model, folder = hf_checkpoint
    on_disk = load_file(folder / "model.safetensors")
    hf_vq = model.model.vqmodel
    ours = VisionTokenizer(vq_preset("tiny"))
    original = hf_state_dict_to_original({k: v for k, v in on_disk.items() if k.startswith("vqmodel.")})
    ours.load_state_dict(original, strict=True)

    torch.manual_seed(1)
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    hf_codes = hf_vq.encode(image, image_sizes=torch.tensor([[32, 32]])).image_tokens[0]
    codes = ours.encode(image)
    assert torch.equal(codes[0], hf_codes)
    torch.testing.assert_close(ours.decode(codes), hf_vq.decode(codes), atol=1e-4, rtol=0)

    clip = torch.rand(1, 8, 3, 32, 32) * 2 - 1
    hf_clip_codes = hf_vq.encode(clip, image_sizes=torch.tensor([[32, 32]])).image_tokens[0]
    clip_codes = ours.encode(clip)
    assert clip_codes.shape == (1, 2, 4, 4)
    assert torch.equal(clip_codes[0], hf_clip_codes)
    torch.testing.assert_close(ours.decode(clip_codes), hf_vq.decode(clip_codes), atol=1e-4, rtol=0)

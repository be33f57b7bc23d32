"""transformers' Emu3 port as an independent oracle: our loaders read its -hf folders and agree."""

import json

import pytest
import torch

from emu3.checkpoint import load_lm, load_vision_tokenizer
from emu3.generation import SamplingConfig, generate


def test_lm_logits_match_transformers(hf_checkpoint):
    model, folder = hf_checkpoint
    ours = load_lm(folder)
    assert ours.config.vocab_size == 300 and ours.config.num_layers == 2
    ids = torch.randint(3, 300, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(input_ids=ids).logits.float()
        logits = ours(ids)
    assert expected.abs().max() > 1  # a meaningful comparison, not two near-zero tensors
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_greedy_decoding_matches_transformers_generate(hf_checkpoint):
    model, folder = hf_checkpoint
    ours = load_lm(folder)
    prompt = [1, 17, 42, 99, 7]
    with torch.no_grad():
        theirs = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, min_new_tokens=12,
                                attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    out = generate(ours, [prompt], max_new_tokens=12, sampling=SamplingConfig(greedy=True), eos_id=-1, pad_id=0)
    assert out[0] == theirs[0, len(prompt):].tolist()


def test_vision_tokenizer_from_hf_folder_matches_transformers(hf_checkpoint):
    model, folder = hf_checkpoint
    vq, processor = load_vision_tokenizer(folder)
    image = torch.rand(1, 3, 40, 24, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        hf_codes = model.model.vqmodel.encode(image, image_sizes=torch.tensor([[40, 24]])).image_tokens[0]
        codes = vq.encode(image)
        torch.testing.assert_close(vq.decode(codes), model.model.vqmodel.decode(codes), atol=1e-4, rtol=0)
    assert torch.equal(codes[0], hf_codes)


def test_hf_config_is_read_without_warnings(hf_checkpoint, recwarn):
    _, folder = hf_checkpoint
    config = json.loads((folder / "config.json").read_text())
    assert "text_config" in config and "vq_config" in config
    load_lm(folder)
    load_vision_tokenizer(folder)
    assert not [w for w in recwarn if "unknown" in str(w.message)]


def test_hf_folder_is_its_own_vision_tokenizer(hf_checkpoint):
    from emu3.checkpoint import find_vision_tokenizer

    _, folder = hf_checkpoint
    assert find_vision_tokenizer(folder) == folder


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_hf_lm_in_bf16_is_close(hf_checkpoint, dtype):
    model, folder = hf_checkpoint
    ours = load_lm(folder, dtype=dtype)
    ids = torch.randint(3, 300, (1, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(input_ids=ids).logits.float()
        logits = ours(ids)
    assert (logits - expected).abs().max() < 0.1 * expected.abs().max()

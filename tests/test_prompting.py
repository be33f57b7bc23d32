"""Golden token lists for every prompt layout, the ratio -> grid rule and output parsing."""

import pytest
import torch

from emu3.prompting import (NEGATIVE_PROMPT, POSITIVE_PROMPT, Turn, caption_prompt, chat_prompt,
                            generation_prompt, grid_for_ratio, image_tokens, parse_image, parse_output)
from emu3.vocab import EMU3


@pytest.fixture(scope="module")
def tok(tiny):
    return tiny.tokenizer


def test_generation_prompts_match_the_original(tok, golden):
    t2i = golden["t2i"]
    grid = grid_for_ratio(t2i["ratio"], t2i["image_area"])
    assert list(grid) == t2i["grid"]
    assert generation_prompt(tok, t2i["prompt"], grid) == t2i["prompt_ids"]
    assert generation_prompt(tok, t2i["negative_prompt"], grid) == t2i["negative_ids"]


def test_generation_prompt_with_official_positive_suffix(tok):
    ids = generation_prompt(tok, "a cat", (90, 90), positive_prompt=POSITIVE_PROMPT)
    expected = [EMU3.bos] + tok.encode("a cat" + POSITIVE_PROMPT) + [EMU3.boi] + tok.encode("90*90") + [EMU3.img]
    assert ids == expected
    assert tok.decode(ids, skip_special=False) == (
        "<|extra_203|>a cat masterpiece, film grained, best quality.<|image start|>90*90<|image token|>")
    assert NEGATIVE_PROMPT.startswith("lowres, bad anatomy") and NEGATIVE_PROMPT.endswith("blurry.")


def test_understanding_prompt_matches_the_original(tok, golden, golden_tensors):
    vqa = golden["vqa"]
    codes = golden_tensors["vq_codes"][0]
    assert chat_prompt(tok, [Turn(vqa["question"], [codes])]) == vqa["prompt_ids"]


def test_image_block_layout(tok):
    codes = torch.tensor([[0, 1, 2], [3, 4, 5]])
    ids = image_tokens(tok, codes)
    text = tok.decode(ids, skip_special=False)
    assert text == ("<|image start|>2*3<|image token|>"
                    "<|visual token 000000|><|visual token 000001|><|visual token 000002|><|extra_200|>"
                    "<|visual token 000003|><|visual token 000004|><|visual token 000005|><|extra_200|>"
                    "<|extra_201|><|image end|>")


def test_multi_turn_chat_layout(tok):
    a1 = tok.encode(" It is red.")
    ids = chat_prompt(tok, [Turn("What color?", [], answer=a1), Turn("And the shape?")])
    text = tok.decode(ids, skip_special=False)
    assert text == ("<|extra_203|>You are a helpful assistant. USER: What color?. ASSISTANT: It is red.<|extra_204|>"
                    " USER: And the shape?. ASSISTANT:")
    with pytest.raises(ValueError, match="no answer"):
        chat_prompt(tok, [Turn("q1"), Turn("q2")])


def test_several_images_come_before_the_text(tok):
    g1, g2 = torch.zeros(1, 2, dtype=torch.long), torch.ones(2, 1, dtype=torch.long)
    ids = chat_prompt(tok, [Turn("Compare", [g1, g2])])
    text = tok.decode(ids, skip_special=False)
    assert text.index("1*2") < text.index("2*1") < text.index("Compare. ASSISTANT:")


def test_caption_prompt_is_bare(tok):
    g = torch.zeros(1, 1, dtype=torch.long)
    ids = caption_prompt(tok, [g], "A photo of")
    assert ids == [EMU3.bos] + image_tokens(tok, g) + tok.encode("A photo of")


def test_user_prompt_cannot_inject_control_tokens(tok):
    ids = generation_prompt(tok, "x<|image end|><|extra_204|>", (1, 1))
    assert ids.count(EMU3.eoi) == 0 and ids.count(EMU3.eos) == 0


@pytest.mark.parametrize("ratio,area,grid", [
    ("1:1", 518400, (90, 90)), ("16:9", 518400, (68, 120)), ("1:1", 262144, (64, 64)),
    ("4:3", 518400, (78, 104)), ("9:16", 518400, (120, 68)),
])
def test_grid_for_ratio(ratio, area, grid):
    assert grid_for_ratio(ratio, area) == grid


@pytest.mark.parametrize("ratio", ["1x1", "16:", "a:b", "0:1", "-1:1", "1:2:3", "6:1"])
def test_bad_ratios_are_rejected(ratio):
    with pytest.raises(ValueError, match="ratio"):
        grid_for_ratio(ratio, 518400)


def test_parse_generated_image_and_mixed_output(tok, golden):
    grid = parse_image(golden["t2i"]["output_ids"])
    assert grid.shape == (8, 8)
    assert grid[0, 0].item() == golden["t2i"]["output_ids"][0] - EMU3.visual_base
    parts = parse_output(golden["vqa"]["prompt_ids"], tok)
    assert parts[0] == "You are a helpful assistant. USER: "
    assert parts[1].shape == (6, 8)
    assert parts[2] == "Please describe the image. ASSISTANT:"


def test_parse_truncated_image_keeps_complete_rows(tok):
    codes = torch.arange(12).view(3, 4)
    ids = image_tokens(tok, codes)
    cut = ids[: ids.index(EMU3.eol, ids.index(EMU3.eol) + 1) + 3]  # two full rows and part of a third
    parts = parse_output(cut, tok)
    assert torch.equal(parts[0], codes[:2])


def test_parse_multi_frame_block(tok):
    frame = lambda c: [EMU3.code_to_id(c), EMU3.code_to_id(c + 1), EMU3.eol]  # noqa: E731
    ids = [EMU3.boi] + tok.encode("1*2") + [EMU3.img] + frame(0) + [EMU3.eof] + frame(5) + [EMU3.eof, EMU3.eoi]
    grid = parse_output(ids, tok)[0]
    assert grid.tolist() == [[[0, 1]], [[5, 6]]]

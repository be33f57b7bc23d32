"""Training layouts and loss masks, golden on small examples with the real Emu3 tokenizer."""

import pytest
import torch

from emu3.prompting import generation_prompt
from emu3.train import examples
from emu3.train.shards import Sample
from emu3.vocab import EMU3
from tests.test_train_utils import one_thread  # noqa: F401

BOS, EOS, BOI, EOI, IMG, EOL, EOF = EMU3.bos, EMU3.eos, EMU3.boi, EMU3.eoi, EMU3.img, EMU3.eol, EMU3.eof
V = EMU3.visual_base


@pytest.fixture(scope="module")
def tok(emu3_fixture):
    from emu3.tokenizer import Tokenizer

    return Tokenizer.from_dir(emu3_fixture / "Emu3-tiny")


def test_text_to_image_supervises_visual_codes_only(tok):
    e = examples.text_to_visual(tok, "a cat", [torch.tensor([[0, 1], [2, 3]])])
    assert e.ids == [BOS, 64, 8251, BOI, 17, 9, 17, IMG, V, V + 1, EOL, V + 2, V + 3, EOL, EOF, EOI]  # "a cat", "2*2"
    assert e.loss_mask == [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 1, 1, 0, 0, 0]
    assert e.prompt_span == (1, 3) and e.grids == [(1, 2, 2)] and e.task == "t2i"
    # The context before the codes is exactly the inference prompt (no positive suffix).
    assert e.ids[:8] == generation_prompt(tok, "a cat", (2, 2))


def test_caption_dropout_leaves_the_empty_prompt_layout(tok):
    codes = [torch.tensor([[0, 1], [2, 3]])]
    e = examples.text_to_visual(tok, "a cat", codes)
    sample = Sample(torch.tensor(e.ids), torch.tensor(e.loss_mask, dtype=torch.bool), e.prompt_span, e.task)
    dropped = sample.without_prompt()
    empty = examples.text_to_visual(tok, "", codes)
    assert dropped.ids.tolist() == empty.ids and dropped.loss_mask.int().tolist() == empty.loss_mask


def test_video_clip_is_one_block_with_eof_after_each_latent_frame(tok):
    e = examples.text_to_visual(tok, "a cat", [torch.tensor([[[5, 6]], [[7, 8]]])], task="video")
    assert e.ids == [BOS, 64, 8251, BOI, 16, 9, 17, IMG, V + 5, V + 6, EOL, EOF, V + 7, V + 8, EOL, EOF, EOI]
    assert e.loss_mask == [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 0]
    assert e.grids == [(2, 1, 2)] and e.task == "video"


def test_video_frames_are_consecutive_image_blocks(tok):
    e = examples.text_to_visual(tok, "a", [torch.tensor([[1]]), torch.tensor([[2]])], task="video")
    assert e.ids == [BOS, 64, BOI, 16, 9, 16, IMG, V + 1, EOL, EOF, EOI, BOI, 16, 9, 16, IMG, V + 2, EOL, EOF, EOI]
    assert e.loss_mask == [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]
    assert e.grids == [(1, 1, 1), (1, 1, 1)]


def test_chat_supervises_each_answer_and_its_eos(tok):
    e = examples.chat(tok, [torch.tensor([[0, 1]])], [("What is it", "A fox."), ("Sure", "Yes")])
    system_user = [2610, 525, 264, 10950, 17847, 13, 13872, 25, 220]  # "You are a helpful assistant. USER: "
    image = [BOI, 16, 9, 17, IMG, V, V + 1, EOL, EOF, EOI]
    turn1 = [3838, 374, 432, 13, 35560, 3846, 2821, 25]  # "What is it. ASSISTANT:"
    turn2 = [13872, 25, 22555, 13, 35560, 3846, 2821, 25]  # " USER: Sure. ASSISTANT:"
    assert e.ids == [BOS] + system_user + image + turn1 + [32, 38835, 13, EOS] + turn2 + [9454, EOS]
    assert e.loss_mask == [0] * 28 + [1, 1, 1, 1] + [0] * 8 + [1, 1]
    assert tok.decode([i for i, m in zip(e.ids, e.loss_mask, strict=True) if m], skip_special=False) == \
        "A fox.<|extra_204|>Yes<|extra_204|>"
    assert e.prompt_span == (0, 0) and e.grids == [(1, 1, 2)] and e.task == "vqa"


def test_single_turn_chat_matches_the_inference_prompt(tok):
    from emu3.prompting import Turn, chat_prompt

    codes = torch.tensor([[3, 4]])
    e = examples.chat(tok, [codes], [("Describe", "Red.")])
    prompt = chat_prompt(tok, [Turn("Describe", [codes])])
    assert e.ids[: len(prompt)] == prompt and sum(e.loss_mask) == len(tok.encode("Red.")) + 1
    assert e.loss_mask[: len(prompt)] == [0] * len(prompt)


def test_bad_examples_are_refused():
    with pytest.raises(ValueError, match="droppable prompt span"):
        examples.Example([1, 2], [1, 1], "t2i", (0, 1))
    with pytest.raises(ValueError, match="unknown task"):
        examples.Example([1], [0], "caption")

"""The compact vocabulary: text round trips (also outside the corpus), folders, prompts, generation."""

from __future__ import annotations

import pytest
import torch

from emu3.compact_vocab import CONTROLS, CompactTokenizer, load_tokenizer
from emu3.prompting import generation_prompt, parse_image
from emu3.tokenizer import Tokenizer, TokenizerError
from tests.conftest import save_compact_model

CORPUS = ["a red circle above a blue square", "what color is the circle?", "two green triangles"]


@pytest.fixture(scope="module")
def base(emu3_fixture) -> Tokenizer:
    return Tokenizer.from_dir(emu3_fixture / "Emu3-tiny")


@pytest.fixture(scope="module")
def compact(base) -> CompactTokenizer:
    return CompactTokenizer.build(base, CORPUS, codebook_size=16)


def test_layout_text_then_controls_then_codes(compact):
    v = compact.vocab
    n = len(compact.ranks)
    assert [getattr(v, name) for name in CONTROLS] == list(range(n, n + len(CONTROLS)))
    assert v.visual_base == n + len(CONTROLS) and compact.vocab_size == v.visual_base + 16 == v.size


@pytest.mark.parametrize("text", CORPUS + ["a purple hexagon, 12*8!", "héllo wörld ✓", "", " \n\t"])
def test_round_trip_inside_and_outside_the_corpus(compact, text):
    ids = compact.encode(text)
    assert all(0 <= i < len(compact.ranks) for i in ids)
    assert compact.decode(ids) == text


def test_corpus_words_are_single_ids_and_others_are_bytes(compact, base):
    assert len(compact.encode(CORPUS[0])) == len(base.encode(CORPUS[0]))
    assert len(compact.encode(" hexagon")) == len(b" hexagon")


def test_special_strings_stay_text_unless_allowed(compact):
    assert compact.vocab.bos not in compact.encode("<|extra_203|>")
    assert compact.encode("<|extra_203|><|visual token 000003|>", allow_special=True) == [
        compact.vocab.bos, compact.vocab.visual_base + 3]
    assert compact.token_id("<|image start|>") == compact.vocab.boi
    with pytest.raises(TokenizerError, match="no place"):
        compact.encode("<|im_start|>", allow_special=True)
    with pytest.raises(TokenizerError, match="no place"):
        compact.token_id("<|visual token 000016|>")


def test_decode_spells_out_controls_and_codes(compact):
    v = compact.vocab
    ids = [v.boi, *compact.encode("1*1"), v.img, v.visual_base + 5, v.eol, v.eof, v.eoi]
    assert compact.decode(ids, skip_special=False) == (
        "<|image start|>1*1<|image token|><|visual token 000005|><|extra_200|><|extra_201|><|image end|>")
    assert compact.decode(ids) == "1*1"
    with pytest.raises(TokenizerError, match="outside"):
        compact.decode([compact.vocab_size])


def test_a_table_must_start_with_the_bytes(base):
    with pytest.raises(TokenizerError, match="single-byte"):
        CompactTokenizer(base, [0, 1, 2], 16)


def test_folder_round_trip(compact, emu3_fixture, tmp_path):
    compact.save(tmp_path / "tok", emu3_fixture / "Emu3-tiny" / "emu3.tiktoken")
    loaded = load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, CompactTokenizer)
    assert loaded.ranks == compact.ranks and loaded.vocab == compact.vocab
    assert loaded.encode(CORPUS[1]) == compact.encode(CORPUS[1])
    assert isinstance(load_tokenizer(emu3_fixture / "Emu3-tiny"), Tokenizer)
    (tmp_path / "tok" / "vocab_map.json").write_text("{}")
    with pytest.raises(TokenizerError, match="format"):
        load_tokenizer(tmp_path / "tok")
    (tmp_path / "tok" / "vocab_map.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(TokenizerError, match="cannot read .*vocab_map.json: 'utf-8' codec can't decode"):
        load_tokenizer(tmp_path / "tok")


def test_generation_prompt_in_compact_ids(compact):
    v = compact.vocab
    ids = generation_prompt(compact, CORPUS[0], (2, 3), vocab=v)
    assert ids[0] == v.bos and ids[-1] == v.img and v.boi in ids
    assert max(ids) < compact.vocab_size
    assert compact.decode(ids) == CORPUS[0] + "2*3"
    codes = torch.arange(6).reshape(2, 3)
    from emu3.prompting import image_tokens

    assert torch.equal(parse_image(image_tokens(compact, codes, v)[4:], v), codes)


def test_a_compact_model_generates_an_image(compact, emu3_fixture, tmp_path):
    from emu3.pipelines import Emu3
    from emu3.pipelines.text_to_image import text_to_image

    v = compact.vocab
    m = Emu3.load(save_compact_model(tmp_path, compact, emu3_fixture))
    assert m.vocab == v
    result = text_to_image(m, CORPUS[0], seed=0)
    assert result.images[0].size == (32, 32) and result.grid == (4, 4)
    # by default, no official prompts around the user's (the model was trained without them)
    assert result.token_ids == text_to_image(m, CORPUS[0], seed=0, positive_prompt="", negative_prompt="").token_ids

    from emu3.cli import main

    assert main(["eval", "shapes", "--model", str(tmp_path / "model"), "--prompts", "1", "--questions", "1",
                 "--videos", "1", "--device", "cpu", "--top-k", "4", "--temperature", "0.7", "--json"]) == 0
    assert main(["generate", CORPUS[0], "--model", str(tmp_path / "model"), "-o", str(tmp_path / "a.png"),
                 "--quiet"]) == 0

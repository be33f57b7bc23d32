"""The tiktoken-based tokenizer against the original's golden ids, and its no-injection rule."""

import json

import pytest

from emu3.tokenizer import NUM_BPE, Tokenizer, TokenizerError, _bytes_to_unicode


@pytest.fixture(scope="module")
def tok(tiny):
    return tiny.tokenizer


def test_golden_tokenization_with_specials_allowed(tok, golden):
    for case in golden["tokenization"]:
        assert tok.encode(case["text"], allow_special=True) == case["ids"]


def test_user_text_cannot_inject_special_tokens(tok):
    ids = tok.encode("hi <|extra_203|><|image start|> there")
    assert all(i < NUM_BPE for i in ids)
    assert tok.decode(ids) == "hi <|extra_203|><|image start|> there"


def test_vocabulary_layout(tok):
    assert tok.vocab_size == 184622
    assert tok.token_id("<|extra_203|>") == 151849
    assert tok.token_id("<|image start|>") == 151852
    assert tok.token_id("<|visual token 000000|>") == 151854
    assert tok.token_id("<|visual token 032767|>") == 184621
    with pytest.raises(KeyError, match="not a special token"):
        tok.token_id("<|nope|>")


def test_visual_tokens_are_ids_by_arithmetic(tok):
    text = "a<|visual token 000007|><|visual token 032767|><|extra_200|>b"
    ids = tok.encode(text, allow_special=True)
    assert ids == tok.encode("a") + [151854 + 7, 184621, 151846] + tok.encode("b")
    assert tok.decode(ids, skip_special=False) == text
    with pytest.raises(KeyError):
        tok.token_id("<|visual token 032768|>")


def test_vision_tokens_file_must_be_in_order(tmp_path, emu3_fixture):
    import shutil

    folder = tmp_path / "tok"
    folder.mkdir()
    shutil.copy(emu3_fixture / "Emu3-tiny" / "emu3.tiktoken", folder)
    lines = (emu3_fixture / "Emu3-tiny" / "emu3_vision_tokens.txt").read_text().splitlines()
    lines[10], lines[11] = lines[11], lines[10]
    (folder / "emu3_vision_tokens.txt").write_text("\n".join(lines))
    with pytest.raises(TokenizerError, match="in order"):
        Tokenizer.from_dir(folder)


def test_digits_split_one_by_one(tok):
    assert tok.encode("90*90") == [tok.encode(c)[0] for c in "90*90"]


def test_decode_skips_control_and_visual_ids(tok):
    ids = [151849] + tok.encode("a cat") + [151854, 151850]
    assert tok.decode(ids) == "a cat"
    assert tok.decode(ids, skip_special=False) == "<|extra_203|>a cat<|visual token 000000|><|extra_204|>"


def test_nfc_normalisation(tok):
    assert tok.encode("e\u0301") == tok.encode("\u00e9")


def test_hf_vocab_json_gives_the_same_tokenizer(tmp_path, tok, emu3_fixture):
    """A -hf folder has vocab.json (byte-level strings) + tokenizer.json instead of emu3.tiktoken."""
    table = _bytes_to_unicode()
    ranks = tok._enc._mergeable_ranks
    vocab = {"".join(table[b] for b in token): rank for token, rank in ranks.items()}
    vocab.update(tok.special_ids)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    added = [{"id": i, "content": t} for t, i in tok.special_ids.items()]
    added += [{"id": tok.visual_base + c, "content": f"<|visual token {c:06d}|>"} for c in range(tok.codebook_size)]
    (tmp_path / "tokenizer.json").write_text(json.dumps({"added_tokens": added}))
    hf = Tokenizer.from_dir(tmp_path)
    text = "Hello, 世界! 123 tabs\tand\nnewlines <|image start|>"
    assert hf.encode(text) == tok.encode(text)
    assert hf.special_ids == tok.special_ids and hf.vocab_size == tok.vocab_size


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer in"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "emu3.tiktoken").write_text("not-base64 x\n")
    with pytest.raises(TokenizerError, match="emu3.tiktoken:1"):
        Tokenizer.from_dir(tmp_path)


def test_unreadable_and_misnumbered_tokenizer_files(tmp_path, emu3_fixture):
    folder = tmp_path / "tok"
    folder.mkdir()
    ranks = (emu3_fixture / "Emu3-tiny" / "emu3.tiktoken").read_text().splitlines()
    (folder / "emu3_vision_tokens.txt").write_text((emu3_fixture / "Emu3-tiny" / "emu3_vision_tokens.txt").read_text())
    (folder / "emu3.tiktoken").write_bytes(b"\xff\xfe\x00 binary")
    with pytest.raises(TokenizerError, match="cannot read BPE ranks file .*emu3.tiktoken"):
        Tokenizer.from_dir(folder)
    # Right count, wrong numbering: the last token gets a rank far outside 0..NUM_BPE-1.
    (folder / "emu3.tiktoken").write_text("\n".join(ranks[:-1] + [ranks[-1].split()[0] + " 99999999"]) + "\n")
    with pytest.raises(TokenizerError, match="ranks are not exactly 0..151642"):
        Tokenizer.from_dir(folder)
    (folder / "emu3.tiktoken").write_text("\n".join(ranks) + "\n")
    (folder / "emu3_vision_tokens.txt").write_bytes(b"\xff\xfe\x00 binary")
    with pytest.raises(TokenizerError, match="cannot read .*emu3_vision_tokens.txt"):
        Tokenizer.from_dir(folder)


def test_truncated_tokenizer_files_are_named(tmp_path, emu3_fixture):
    folder = tmp_path / "tok"
    folder.mkdir()
    ranks = (emu3_fixture / "Emu3-tiny" / "emu3.tiktoken").read_text().splitlines()
    vision = (emu3_fixture / "Emu3-tiny" / "emu3_vision_tokens.txt").read_text()
    (folder / "emu3.tiktoken").write_text("\n".join(ranks[:100000]) + "\n")
    (folder / "emu3_vision_tokens.txt").write_text(vision)
    with pytest.raises(TokenizerError, match="emu3.tiktoken: expected 151643 BPE ranks, found 100000"):
        Tokenizer.from_dir(folder)
    (folder / "emu3.tiktoken").write_text("\n".join(ranks) + "\n")
    (folder / "emu3_vision_tokens.txt").write_text(vision[:len(vision) // 2])  # cut inside a line
    with pytest.raises(TokenizerError, match="emu3_vision_tokens.txt: the vision tokens must follow the image markers"):
        Tokenizer.from_dir(folder)


@pytest.mark.parametrize("vocab,added,match", [
    ([1, 2], None, "vocab.json: expected a JSON object"),
    ({"a": "0"}, None, "vocab.json: expected a JSON object"),
    (None, [{"content": "<|image start|>"}], "cannot read added tokens"),
    (None, [{"id": NUM_BPE + 208 + 5, "content": "<|image start|>"}], "not consecutive"),
])
def test_malformed_hf_tokenizer_files(tmp_path, emu3_fixture, vocab, added, match):
    if vocab is not None:
        (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    else:
        (tmp_path / "emu3.tiktoken").write_text((emu3_fixture / "Emu3-tiny" / "emu3.tiktoken").read_text())
    (tmp_path / "tokenizer.json").write_text(json.dumps({"added_tokens": added or []}))
    with pytest.raises(TokenizerError, match=match):
        Tokenizer.from_dir(tmp_path)

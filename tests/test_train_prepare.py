"""`emu3 prepare` with the real fixture tokenizer and vision tokenizer: layouts, bad data, resumption."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from emu3.cli import main
from emu3.train.config import PrepareConfig
from emu3.train.prepare import prepare
from emu3.train.shards import DataError, open_folder, shard_path
from tests.test_train_utils import one_thread  # noqa: F401


def _image(path, h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path.name


def _write_manifest(tmp_path):
    _image(tmp_path / "a.png")
    _image(tmp_path / "b.png", seed=1)
    (tmp_path / "clip").mkdir()
    for i in range(16):
        _image(tmp_path / "clip" / f"{i:02d}.png", 64, 64, seed=10 + i)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    records = [
        {"id": "t2i", "image": "a.png", "caption": "a red fox"},
        {"image": "b.png", "question": "What is it", "answer": "A fox."},
        {"image": "b.png", "turns": [{"question": "Q1", "answer": "A1"}, {"question": "Q2", "answer": "A2"}]},
        {"frames": ["clip/00.png", "clip/01.png", "clip/02.png"], "caption": "three frames"},
        {"video": "clip", "caption": "sixteen frames"},  # 4 latent frames: longer than --max-seq-len
        {"image": "missing.png", "caption": "x"},
        {"image": "corrupt.png", "caption": "x"},
        {"image": "a.png", "caption": "   "},
        {"image": "a.png", "captoin": "typo"},
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n{broken json\n")
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, emu3_fixture):
    """(manifest, data folder, summary) of one prepare run, shared by the tests below (copy before changing)."""

    tmp = tmp_path_factory.mktemp("prepare")
    manifest = _write_manifest(tmp)
    summary = prepare(_cfg(manifest, tmp / "out", emu3_fixture), torch.device("cpu"))
    return manifest, tmp / "out", summary


def _cfg(manifest, out, fixture, **kw):
    return PrepareConfig(manifest=str(manifest), output=str(out), model=str(fixture / "Emu3-tiny"),
                         max_seq_len=200, records_per_shard=3, quiet=True, **kw)


def test_prepare_writes_shards_and_skips_bad_records(prepared):
    _, out, summary = prepared
    assert summary["records"] == 10 and summary["examples"] == 4 and summary["skipped"] == 6
    assert summary["skipped_by_reason"] == {"too long": 1, "missing file": 1, "unreadable media": 1,
                                            "empty caption": 1, "invalid record": 1, "invalid json": 1}
    assert [s["line"] for s in summary["skipped_records"]] == [5, 6, 7, 8, 9, 10]
    assert "more than the 200" in summary["skipped_records"][0]["message"]
    assert summary["tasks"] == {"t2i": 1, "vqa": 2, "video": 1}
    assert summary["shards_written"] == 4 and summary["shards_reused"] == 0
    info, shards = open_folder(out)
    assert info["vocab_size"] == 184622 and info["image_area"] == 4096 and len(shards) == 4
    first = shards[0].sample(0)
    # 64x48 rescaled to the 4096-pixel area, then smart-resized: 72x56 pixels, a 7x9 grid.
    assert first.task == "t2i" and first.prompt_span == (1, 1 + 3)  # "a red fox" is 3 tokens
    assert int(first.loss_mask.sum()) == 63 and len(first.ids) == 1 + 3 + 5 + 7 * 10 + 2
    grids = shards[0]._file.get_tensor("grids").tolist()
    assert grids == [[1, 7, 9], [1, 6, 8], [1, 6, 8]]  # VQA images: preprocessed as for chat, 48x64
    assert shards[1].sample(0).task == "video"
    assert shards[1]._file.get_tensor("grids").tolist() == [[1, 8, 8]]  # 3 frames padded to 4: 1 latent frame
    assert json.loads((out / "summary.json").read_text())["examples"] == 4


def test_prepare_resumes_and_refuses_other_settings(prepared, tmp_path, emu3_fixture):

    manifest, out, first = prepared
    shutil.copytree(out, tmp_path / "out")
    cfg = _cfg(manifest, tmp_path / "out", emu3_fixture)
    before = shard_path(tmp_path / "out", 0).read_bytes()
    shard_path(tmp_path / "out", 2).unlink()  # as if the run had been killed while writing shard 2
    (tmp_path / "out" / ".tmp-shard-00002.safetensors").write_bytes(b"half")  # its leftover temp file
    again = prepare(cfg, torch.device("cpu"))
    assert again["shards_written"] == 1 and again["shards_reused"] == 3
    assert {k: again[k] for k in ("examples", "tokens", "skipped_by_reason")} == \
        {k: first[k] for k in ("examples", "tokens", "skipped_by_reason")}
    assert shard_path(tmp_path / "out", 0).read_bytes() == before
    with pytest.raises(DataError, match="other settings"):
        prepare(_cfg(manifest, tmp_path / "out", emu3_fixture, video_mode="frames"), torch.device("cpu"))
    shard_path(tmp_path / "out", 1).unlink()
    with pytest.raises(DataError, match="incomplete"):  # training refuses an unfinished folder
        open_folder(tmp_path / "out")


def test_the_eta_of_a_resumed_prepare_counts_the_records_of_this_process_only(prepared, tmp_path, emu3_fixture,
                                                                              monkeypatch, capsys):
    import dataclasses
    from types import SimpleNamespace

    from emu3.train import metrics

    manifest, out, _ = prepared
    shutil.copytree(out, tmp_path / "out")
    shard_path(tmp_path / "out", 2).unlink()  # records 7 to 9 are done again; 1 to 6 and 10 are reused
    ticks = iter(range(100))  # the progress line is created at 0 s; each update comes 1 s after the last
    monkeypatch.setattr(metrics, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    prepare(dataclasses.replace(_cfg(manifest, tmp_path / "out", emu3_fixture), quiet=False), torch.device("cpu"))
    # record 7 ends at 3 s: 1 record in 3 s, 3 left (not 7 records in 3 s, which said 1 s)
    assert "7/10 eta 9s" in capsys.readouterr().err


def test_prepare_command(prepared, tmp_path, emu3_fixture, capsys):
    manifest = prepared[0]
    argv = ["prepare", str(manifest), "-o", str(tmp_path / "cli"), "--model", str(emu3_fixture / "Emu3-tiny"),
            "--max-seq-len", "200", "--records-per-shard", "100", "--quiet", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["examples"] == 4 and out["skipped"] == 6 and out["shards_written"] == 1
    assert main(["prepare", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "x"), "--model",
                 str(emu3_fixture / "Emu3-tiny")]) == 2
    assert "manifest not found" in capsys.readouterr().err


def test_prepared_images_match_the_inference_encodings(prepared, tiny):
    """VQA images are tokenized as `emu3 chat` tokenizes them; t2i targets follow the official rescale."""
    from emu3.prompting import parse_image
    from emu3.train.prepare import rescale_to_area
    from emu3.vision import load_image

    manifest, out, _ = prepared
    _, shards = open_folder(out)
    folder = manifest.parent

    def codes_of(sample):
        ids = sample.ids.tolist()
        return parse_image(ids[ids.index(tiny.vocab.boi) + 1:ids.index(tiny.vocab.eoi)], tiny.vocab)

    vqa = shards[0].sample(1)
    assert vqa.task == "vqa"
    assert torch.equal(codes_of(vqa), tiny.encode_image(load_image(folder / "b.png")))
    t2i = shards[0].sample(0)
    expected = tiny.encode_image(rescale_to_area(load_image(folder / "a.png").convert("RGB"), 4096))
    assert torch.equal(codes_of(t2i), expected)


def test_an_empty_manifest_a_file_as_output_or_a_corrupt_dataset_json_is_refused(tmp_path, emu3_fixture):
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    with pytest.raises(DataError, match="holds no records"):
        prepare(_cfg(tmp_path / "empty.jsonl", tmp_path / "out", emu3_fixture), torch.device("cpu"))
    assert not (tmp_path / "out").exists()
    (tmp_path / "one.jsonl").write_text(json.dumps({"image": _image(tmp_path / "a.png"), "caption": "x"}) + "\n")
    (tmp_path / "taken").write_text("not a folder")
    with pytest.raises(DataError, match="taken is a file, not a data folder"):
        prepare(_cfg(tmp_path / "one.jsonl", tmp_path / "taken", emu3_fixture), torch.device("cpu"))
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "dataset.json").write_text('{"format": "emu3-tr')  # not "prepared with other settings"
    with pytest.raises(DataError, match="dataset.json is unreadable .*pass --overwrite"):
        prepare(_cfg(tmp_path / "one.jsonl", tmp_path / "cut", emu3_fixture), torch.device("cpu"))


def test_manifest_byte_order_mark_and_folders_given_as_images(tmp_path):
    from emu3.train.manifest import RecordError, parse_record, read_lines

    _image(tmp_path / "a.png")
    (tmp_path / "frames").mkdir()
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"image": "a.png", "caption": "x"}).encode() + b"\n")
    ((line, text),) = read_lines(path)
    assert parse_record(line, text, tmp_path).image == tmp_path / "a.png"
    assert parse_record(1, json.dumps({"video": "frames", "caption": "x"}), tmp_path).video == tmp_path / "frames"
    for record in ({"image": "frames", "caption": "x"}, {"frames": ["a.png", "frames"], "caption": "x"}):
        with pytest.raises(RecordError, match="frames is a folder, not an image file"):
            parse_record(1, json.dumps(record), tmp_path)


def test_overwrite_deletes_only_the_files_prepare_writes(tmp_path, emu3_fixture):
    """A data folder that also holds the manifest and its images: --overwrite replaces the shards,
    dataset.json and summary.json (and their temporary files), and nothing else."""
    (tmp_path / "one.jsonl").write_text(json.dumps({"image": _image(tmp_path / "a.png"), "caption": "x"}) + "\n"
                                        + json.dumps({"image": "a.png", "caption": "y"}) + "\n")
    (tmp_path / "shards-notes.txt").write_text("mine")
    with pytest.raises(DataError, match="is not an emu3 data folder"):
        prepare(_cfg(tmp_path / "one.jsonl", tmp_path, emu3_fixture), torch.device("cpu"))
    first = prepare(_cfg(tmp_path / "one.jsonl", tmp_path, emu3_fixture, overwrite=True), torch.device("cpu"))
    assert first["examples"] == 2
    (tmp_path / ".tmp-shard-00000.safetensors").write_bytes(b"half")  # a crashed write's leftover
    shutil.copy(shard_path(tmp_path, 0), shard_path(tmp_path, 7))  # a shard no longer listed
    again = prepare(_cfg(tmp_path / "one.jsonl", tmp_path, emu3_fixture, video_mode="frames", overwrite=True),
                    torch.device("cpu"))
    assert again["examples"] == 2 and again["shards_written"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "dataset.json", "one.jsonl", "shard-00000.safetensors",
                                                          "shards-notes.txt", "summary.json"]


def test_a_vision_tokenizer_with_more_codes_than_the_model_has_visual_ids_is_refused(tmp_path, emu3_fixture):
    from emu3.bundled import MODEL_DIR

    (tmp_path / "one.jsonl").write_text(json.dumps({"image": _image(tmp_path / "a.png"), "caption": "x"}) + "\n")
    cfg = PrepareConfig(manifest=str(tmp_path / "one.jsonl"), output=str(tmp_path / "out"),
                        model=str(MODEL_DIR),  # 1024 visual ids
                        vision_tokenizer=str(emu3_fixture / "Emu3-VisionTokenizer-tiny"), quiet=True)  # 32768 codes
    with pytest.raises(DataError, match="32768 codes.* only 1024 visual ids"):
        prepare(cfg, torch.device("cpu"))
    assert not (tmp_path / "out").exists()

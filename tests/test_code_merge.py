"""Code aliases (`emu3 merge-codes`): uniform patches of one color encode to one canonical code,
decoding is unchanged, the table survives saving, loading and decoder-only tuning, and bad tables
are refused with the file named."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from emu3.checkpoint import CheckpointError, load_vision_tokenizer
from emu3.cli import main
from emu3.config import vq_preset
from emu3.train.code_merge import patch_stats, uniform_aliases
from emu3.vision import VisionTokenizer
from tests.test_train_utils import one_thread  # noqa: F401

COLORS = [(200, 30, 30), (30, 60, 220), (240, 240, 240)]


@pytest.fixture()
def flat_manifest(tmp_path):
    """Flat pictures of three colors (four each) and two noise pictures, 32x32."""
    rng = np.random.default_rng(0)
    lines = []
    for i, rgb in enumerate(COLORS * 4):
        Image.new("RGB", (32, 32), rgb).save(tmp_path / f"flat{i}.png")
        lines.append(json.dumps({"image": f"flat{i}.png"}))
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"noise{i}.png")
        lines.append(json.dumps({"image": f"noise{i}.png"}))
    (tmp_path / "pics.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "pics.jsonl"


def test_aliases_change_encoding_only():
    torch.manual_seed(0)
    vq = VisionTokenizer(vq_preset("tiny", codebook_size=64))
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        codes = vq.encode(pixels)
        decoded = vq.decode(codes)
        source = int(codes[0, 0, 0])
        target = (source + 1) % 64
        table = torch.arange(64)
        table[source] = target
        vq.quantize.set_aliases(table)
        aliased = vq.encode(pixels)
        assert torch.equal(aliased, torch.where(codes == source, target, codes))
        torch.testing.assert_close(vq.decode(codes), decoded)  # decoding does not look at the table
    assert torch.equal(vq.quantize.aliases(), table)
    vq.quantize.set_aliases(None)
    assert vq.quantize.aliases() is None
    with pytest.raises(ValueError, match="64 codes"):
        vq.quantize.set_aliases(torch.arange(10))


def test_uniform_codes_of_one_color_share_the_most_used_code():
    red, reddish, blue = [0.8, 0.1, 0.1], [0.82, 0.12, 0.1], [0.1, 0.2, 0.9]
    # code 4: uniform red (3 patches), 1: uniform red (2), 2: uniform blue, 3: red but not uniform
    codes = torch.tensor([4, 4, 4, 1, 1, 2, 3, 3])
    deviation = torch.tensor([0.0, 0.01, 0.0, 0.0, 0.02, 0.0, 0.3, 0.2])
    color = torch.tensor([red, red, red, reddish, reddish, blue, red, red])
    table = uniform_aliases(codes, deviation, color, 6, tol=0.04, color_tol=0.1)
    assert table.tolist() == [0, 4, 2, 3, 4, 5]
    strict = uniform_aliases(codes, deviation, color, 6, tol=0.04, color_tol=0.01)
    assert strict.tolist() == list(range(6))  # colors 0.02 apart no longer merge
    with pytest.raises(ValueError, match="tol"):
        uniform_aliases(codes, deviation, color, 6, tol=0.0, color_tol=0.1)


def test_patch_stats_order_and_scale():
    pixels = -torch.ones(1, 3, 16, 16)  # black
    pixels[0, :, :8, 8:] = 1.0  # top-right patch white
    pixels[0, 0, 8:, :8] = torch.linspace(-1, 1, 8)  # bottom-left patch: a red ramp
    deviation, color = patch_stats(pixels, 8)
    assert color[:, 0].tolist() == pytest.approx([0.0, 1.0, 0.5, 0.0])
    assert deviation[[0, 1, 3]].tolist() == [0.0, 0.0, 0.0] and deviation[2] > 0.05


def test_merge_codes_command_then_decoder_tuning_keeps_the_aliases(flat_manifest, tmp_path, capsys):
    torch.manual_seed(0)
    source = tmp_path / "vq"
    # a k-means codebook (after one autoencoder step) spreads flat pictures over several codes
    assert main(["train-vq", "--preset", "tiny", "--init", "--data", str(flat_manifest), "-o", str(source),
                 "--resolution", "32", "--autoencoder-steps", "1", "--max-steps", "2", "--quiet"]) == 0
    merged = tmp_path / "merged"
    argv = ["merge-codes", "--vision-tokenizer", str(source / "export" / "vision-tokenizer"),
            "--data", str(flat_manifest), "-o", str(merged), "--tol", "0.04", "--json"]
    capsys.readouterr()
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["canonical_share"] == 1.0 and report["codes_after"] < report["codes_before"]
    assert (merged / "code_aliases.json").is_file()

    before, processor = load_vision_tokenizer(source / "export" / "vision-tokenizer")
    after, _ = load_vision_tokenizer(merged)
    table = after.quantize.aliases()
    pixels = torch.stack(processor.preprocess([Image.new("RGB", (32, 32), rgb) for rgb in COLORS]))
    with torch.no_grad():
        raw, canonical = before.encode(pixels), after.encode(pixels)
    assert torch.equal(canonical, table[raw])  # the loaded tokenizer encodes through the saved table
    assert len(canonical.unique()) < len(raw.unique())
    # flat pictures of different colors keep different codes
    assert not set(canonical[0].unique().tolist()) & set(canonical[1].unique().tolist())

    tuned = tmp_path / "tuned"
    assert main(["train-vq", "--vision-tokenizer", str(merged), "--decoder-only", "--data", str(flat_manifest),
                 "-o", str(tuned), "--resolution", "32", "--max-steps", "1", "--quiet"]) == 0
    assert torch.equal(load_vision_tokenizer(tuned / "export" / "vision-tokenizer")[0].quantize.aliases(),
                       after.quantize.aliases())
    retrained = tmp_path / "retrained"
    assert main(["train-vq", "--vision-tokenizer", str(merged), "--data", str(flat_manifest),
                 "-o", str(retrained), "--resolution", "32", "--max-steps", "1", "--quiet"]) == 0
    assert not (retrained / "export" / "vision-tokenizer" / "code_aliases.json").exists()


@pytest.mark.parametrize("content, message", [
    ("not json", "not a code alias table"),
    (json.dumps({"format": "emu3-code-aliases/1", "groups": [[1, 2], [2, 3]]}), "another group"),
    (json.dumps({"format": "emu3-code-aliases/1", "groups": [[1, 99999]]}), "outside"),
])
def test_bad_alias_tables_are_refused(tmp_path, content, message):
    torch.manual_seed(0)
    from emu3.train import export
    from emu3.vision import ImageProcessor

    vq = VisionTokenizer(vq_preset("tiny", codebook_size=64))
    folder = export.save_vision_tokenizer(vq.state_dict(), vq.config, ImageProcessor(), tmp_path / "vq")
    (folder / "code_aliases.json").write_text(content)
    with pytest.raises(CheckpointError, match=message) as info:
        load_vision_tokenizer(folder)
    assert "code_aliases.json" in str(info.value)


def test_merge_codes_refuses_an_output_folder_it_would_wipe(flat_manifest, tmp_path, capsys, monkeypatch):
    """The merged tokenizer replaces the whole -o folder: one holding other files, or the tokenizer read, is refused
    before any work."""
    import shutil

    from emu3.bundled import VISION_TOKENIZER_DIR
    from emu3.train import code_merge

    monkeypatch.setattr(code_merge, "merge_uniform_codes", lambda *a, **k: pytest.fail("merged before refusing"))
    source = tmp_path / "models" / "vq"
    shutil.copytree(VISION_TOKENIZER_DIR, source)
    kept = tmp_path / "out"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    for output, message in [(kept, "holds files that are not a vision tokenizer's (notes.txt)"),
                            (source.parent, "would overwrite"), (source, "would overwrite")]:
        argv = ["merge-codes", "--vision-tokenizer", str(source), "--data", str(flat_manifest), "-o", str(output)]
        assert main(argv) == 2
        assert message in capsys.readouterr().err
    assert (kept / "notes.txt").read_text() == "mine" and (source / "model.safetensors").is_file()

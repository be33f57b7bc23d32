"""`emu3 export` into folders that hold what it reads: the vision tokenizer it links to is left in
place, never deleted; an output that would overwrite the base model or a tokenizer is refused."""

import json
import shutil

import pytest

from emu3.checkpoint import load_lm, load_vision_tokenizer
from emu3.cli import main
from emu3.train.config import SFTConfig
from emu3.train.sft import train_lm
from tests.test_train_utils import base_model, one_thread, t2i_dataset  # noqa: F401


@pytest.fixture()
def run(tmp_path, emu3_fixture):
    """A one-step run of a base in `base/model` on data whose vision tokenizer is `vq/vision-tokenizer`."""
    t2i_dataset(tmp_path / "data")
    base_model(tmp_path / "base" / "model")
    shutil.copytree(emu3_fixture / "Emu3-VisionTokenizer-tiny", tmp_path / "vq" / "vision-tokenizer")
    train_lm(SFTConfig(output=str(tmp_path / "run"), data=[str(tmp_path / "data")],
                       model=str(tmp_path / "base" / "model"), vision_tokenizer=str(tmp_path / "vq" / "vision-tokenizer"),
                       max_steps=1, micro_batch_size=2, grad_accum=1, save=True, quiet=True))
    return tmp_path


def test_export_into_the_folder_of_its_vision_tokenizer_leaves_the_tokenizer(run, capsys):
    vq_files = sorted(p.name for p in (run / "vq" / "vision-tokenizer").iterdir())
    assert main(["export", str(run / "run"), "-o", str(run / "vq"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["export"] == str(run / "vq" / "model")
    assert not (run / "vq" / "vision-tokenizer").is_symlink()
    assert sorted(p.name for p in (run / "vq" / "vision-tokenizer").iterdir()) == vq_files
    load_vision_tokenizer(run / "vq" / "vision-tokenizer")
    load_lm(run / "vq" / "model")
    # Exporting twice to another folder keeps a link that the second export leaves as it is.
    for _ in range(2):
        assert main(["export", str(run / "run"), "-o", str(run / "out"), "--json"]) == 0
    assert (run / "out" / "vision-tokenizer").resolve() == (run / "vq" / "vision-tokenizer").resolve()
    assert sorted(p.name for p in (run / "vq" / "vision-tokenizer").iterdir()) == vq_files


def test_export_over_the_base_model_or_around_the_vision_tokenizer_is_refused(run, capsys):
    base_files = {p.name: p.read_bytes() for p in (run / "base" / "model").iterdir()}
    assert main(["export", str(run / "run"), "-o", str(run / "base")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("emu3 export: error: ") and "base" in err and "another output folder" in err
    assert {p.name: p.read_bytes() for p in (run / "base" / "model").iterdir()} == base_files
    # An output whose vision-tokenizer folder holds the tokenizer read (here: the same path one level up).
    shutil.move(run / "vq" / "vision-tokenizer", run / "vq" / "inner")
    (run / "vq" / "vision-tokenizer").mkdir()
    shutil.move(run / "vq" / "inner", run / "vq" / "vision-tokenizer" / "inner")
    saved = run / "run" / "checkpoints" / "step-00000001" / "trainer_state.json"
    trainer_state = json.loads(saved.read_text())  # the run now names the tokenizer's new place
    trainer_state["config"]["vision_tokenizer"] = str(run / "vq" / "vision-tokenizer" / "inner")
    saved.write_text(json.dumps(trainer_state))
    assert main(["export", str(run / "run"), "-o", str(run / "vq")]) == 2
    assert "another output folder" in capsys.readouterr().err
    load_vision_tokenizer(run / "vq" / "vision-tokenizer" / "inner")


def test_a_vision_tokenizer_export_over_the_tokenizer_it_fine_tunes_is_refused(tmp_path, emu3_fixture):
    from safetensors.torch import save_file

    from emu3.train import vq
    from emu3.train.config import VQTrainConfig

    source = tmp_path / "vq" / "vision-tokenizer"
    shutil.copytree(emu3_fixture / "Emu3-VisionTokenizer-tiny", source)
    before = (source / "model.safetensors").read_bytes()
    cfg = VQTrainConfig(output=str(tmp_path / "run"), data=["m.jsonl"], vision_tokenizer=str(source))
    tokenizer, _ = vq.build_tokenizer(cfg)
    (tmp_path / "step").mkdir()
    save_file({f"vq.{k}": v.contiguous() for k, v in tokenizer.state_dict().items()},
              str(tmp_path / "step" / "model.safetensors"))
    with pytest.raises(ValueError, match="would overwrite .*choose another output folder"):
        vq.export_checkpoint(tmp_path / "step", tmp_path / "vq", cfg)
    assert (source / "model.safetensors").read_bytes() == before
    assert vq.export_checkpoint(tmp_path / "step", tmp_path / "out", cfg) == tmp_path / "out" / "vision-tokenizer"

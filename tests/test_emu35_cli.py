"""The Emu3.5 commands end to end on the tiny fixture (Emu3.5-tiny LM + IBQ), at small image areas.

`emu3 generate` runs the real loading path once; the other commands reuse one loaded bundle (the
tokenizer alone takes seconds to build), which changes nothing but the time taken.
"""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest
from PIL import Image

from emu3.cli import main
from emu3.emu35.bundle import Emu35
from emu3.vocab import EMU35
from tests.conftest import REPO, parse_cli


def run_json(capsys, argv):
    assert main(argv + ["--json", "--quiet"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def lm_dir(emu35_fixture):
    return str(emu35_fixture / "Emu3.5-tiny")


@pytest.fixture(scope="module")
def bundle(lm_dir):
    return Emu35.load(lm_dir)


@pytest.fixture
def loaded(bundle, monkeypatch):
    monkeypatch.setattr(Emu35, "load", classmethod(lambda cls, *args, **kwargs: bundle))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "ref.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_generate_picks_emu35_from_the_checkpoint(capsys, tmp_path, lm_dir):
    out = run_json(capsys, ["generate", "a red cat", "--model", lm_dir, "--image-area", "4096", "--max-new-tokens",
                            "26", "--seed", "3", "--batch", "2", "-o", str(tmp_path / "cat.png")])
    assert out["images"] == [str(tmp_path / "cat_0.png"), str(tmp_path / "cat_1.png")]
    # The official t2i default is the "default" preset, 4:3 (55x73 tokens at 1024x1024 pixels, here 1/16 of that)
    assert out["grid"] == [3, 5] and out["seeds"] == [3, 4]
    for ids in out["token_ids"]:
        assert ids[-1] == EMU35.eoi and ids.count(EMU35.boi) == 1 and len(ids) <= 26
    assert Image.open(tmp_path / "cat_1.png").size == (80, 48)


def test_edit_follows_the_reference_size(capsys, tmp_path, lm_dir, reference, loaded):
    out = run_json(capsys, ["edit", "make the sky green", "--image", reference, "--model", lm_dir, "--image-area",
                            "6144", "--max-new-tokens", "36", "--seed", "0", "-o", str(tmp_path / "e.png")])
    assert out["grid"] == [4, 6] and Image.open(tmp_path / "e.png").size == (96, 64)


@pytest.mark.parametrize("task", ["story", "howto"])
def test_interleaved_commands_write_a_result_and_a_viewer(capsys, tmp_path, lm_dir, reference, loaded, task):
    extra = ["--image", reference, "--steps", "3"] if task == "howto" else []
    out = run_json(capsys, [task, "a fox and a crow", "--model", lm_dir, "--image-area", "6144", "--max-new-tokens",
                            "24", "--seed", "1", "-o", str(tmp_path / task)] + extra)
    data = json.loads((tmp_path / task / "result.json").read_text())
    assert out["result"] == str(tmp_path / task / "result.json") and out["stopped"] == data["stopped"]
    assert data["task"] == task and data["prompt"] == "a fox and a crow" and data["seed"] == 1
    assert data["stopped"] in ("eos", "length") and all(s["type"] in ("text", "global_cot", "image_cot", "image")
                                                        for s in data["segments"])
    assert len(data["token_ids"]) <= 24
    html = (tmp_path / task / "index.html").read_text()
    assert "a fox and a crow" in html
    if task == "howto":
        assert data["reference_images"] == ["reference_00.png"] and (tmp_path / task / "reference_00.png").is_file()


def test_chat_answers_in_text_only(capsys, lm_dir, reference, loaded):
    out = run_json(capsys, ["chat", "what is it?", "--image", reference, "--image-area", "6144", "--model", lm_dir,
                            "--max-new-tokens", "6"])
    assert isinstance(out["text"], str) and len(out["token_ids"]) <= 6
    assert not any(EMU35.is_visual(t) or t == EMU35.boi for t in out["token_ids"])


@pytest.mark.parametrize("argv, message", [
    (["generate", "x", "--ratio", "5:4", "-o", "x.png"], "unknown aspect ratio"),
    (["generate", "x", "--negative-prompt", "ugly", "-o", "x.png"], "apply to Emu3 only"),
    (["edit", "x", "-o", "x.png"] + ["--image", "REF"] * 4, "at most 3 reference images"),
    (["story", "x", "--image-area", "4", "--image", "REF", "-o", "out"], "too small"),
    # A reference area whose grid cannot fit the context is refused before the pixels are resized.
    (["chat", "x", "--image-area", "1000000000000", "--image", "REF"], "more than the model's context"),
    # A budget the model's context cuts short says so, rather than asking for a larger --max-new-tokens.
    (["edit", "x", "--image", "REF", "--image-area", "301056", "--max-new-tokens", "100000", "-o", "e.png"],
     "new tokens cannot hold a (28, 42) image, which needs 1211 (the model's context of 2048 leaves only that after the prompt"),
    (["story", "x", "--greedy", "--text-top-k", "5", "--image-temperature", "0.5", "-o", "out"],
     "sampling options (--text-top-k, --image-temperature) do nothing with --greedy"),
    (["edit", "x", "-o", "edited", "--image", "REF"], "-o edited: no suffix names no image format"),
])
def test_bad_requests_exit_2_with_a_message(capsys, lm_dir, reference, loaded, argv, message):
    argv = [reference if a == "REF" else a for a in argv]
    assert main(argv + ["--model", lm_dir, "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_emu3_only_options_are_refused_for_emu3(capsys, emu3_fixture):
    argv = ["generate", "x", "--model", str(emu3_fixture / "Emu3-tiny"), "--max-new-tokens", "9", "-o", "x.png"]
    assert main(argv) == 2
    assert "Emu3.5 checkpoints only" in capsys.readouterr().err


def test_readme_emu35_commands_run(capsys, tmp_path, monkeypatch, emu35_fixture, loaded):
    section = (REPO / "README.md").read_text().split("## Emu3.5\n", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line) for line in block.splitlines() if line.strip()]
    assert [c[:2] for c in commands] == [["emu3", "generate"], ["emu3", "story"]]
    monkeypatch.chdir(REPO)
    for argv in commands:
        out = argv.index("-o") + 1
        argv[out] = str(tmp_path / argv[out])
        assert main(argv[1:] + ["--quiet"]) == 0, capsys.readouterr().err
    assert Image.open(tmp_path / "cat.png").size == (80, 48)  # the official default ratio, 4:3
    assert (tmp_path / "story" / "index.html").is_file()


def test_generate_options_steer_the_image_tokens():
    from emu3.emu35.cli import _sampling
    from emu3.emu35.tasks import task_settings

    base = task_settings("t2i").image
    parse = parse_cli
    given = _sampling(parse(["generate", "x", "-o", "o.png", "--top-k", "7", "--plausibility", "0.2"]), "", base)
    assert (given.top_k, given.plausibility, given.top_p) == (7, 0.2, base.top_p)
    assert _sampling(parse(["generate", "x", "-o", "o.png"]), "", base) == base  # the official setting, no floor


@pytest.mark.parametrize("argv", [["story", "a fox", "-o", "st"], ["edit", "x", "--image", "a.png", "-o", "e.png"]])
def test_emu35_commands_require_a_model(capsys, argv):
    """The bundled model is an Emu3 model; without --model these commands crashed in `resolve(None)`."""
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    assert "the following arguments are required: --model" in capsys.readouterr().err


def test_story_refuses_a_folder_of_the_users_images_before_loading(capsys, tmp_path):
    (tmp_path / "image_00.png").write_bytes(b"the user's")
    assert main(["story", "a fox", "--model", "/nonexistent", "-o", str(tmp_path), "--quiet"]) == 2
    assert "holds files this did not write (image_00.png)" in capsys.readouterr().err
    assert (tmp_path / "image_00.png").read_bytes() == b"the user's"


@pytest.mark.parametrize("argv, flag", [
    (["chat", "x", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["generate", "x", "--max-new-tokens", "-3", "-o", "x.png"], "--max-new-tokens"),
    (["story", "x", "--max-new-tokens", "-5", "-o", "out"], "--max-new-tokens"),
    (["howto", "x", "--steps", "0", "-o", "out"], "--steps"),
])
def test_counts_below_one_are_refused_before_loading(capsys, argv, flag):
    with pytest.raises(SystemExit) as done:
        main(argv + ["--model", "/nonexistent"])
    assert done.value.code == 2
    assert f"{flag} is a whole number of at least 1" in capsys.readouterr().err


def test_a_cmyk_reference_is_saved_with_the_response(capsys, tmp_path, lm_dir, reference, loaded):
    """Pillow cannot write CMYK as PNG: the story used to fail after generating, writing nothing."""
    cmyk = tmp_path / "cmyk.jpg"
    Image.open(reference).convert("CMYK").save(cmyk)
    run_json(capsys, ["story", "a fox", "--image", str(cmyk), "--model", lm_dir, "--image-area", "6144",
                      "--max-new-tokens", "8", "--seed", "1", "-o", str(tmp_path / "story")])
    saved = Image.open(tmp_path / "story" / "reference_00.png")
    assert saved.mode == "RGB" and saved.size == (96, 64)


def test_a_batch_keeps_its_finished_images_when_one_sample_has_none(tmp_path):
    from types import SimpleNamespace

    from emu3.emu35.cli import _save_single_images

    picture = Image.new("RGB", (16, 16), "red")
    results = [SimpleNamespace(images=[picture], seed=4, stopped="image"),
               SimpleNamespace(images=[], seed=5, stopped="length"),
               SimpleNamespace(images=[], seed=6, stopped="eos")]
    with pytest.raises(ValueError) as error:
        _save_single_images(results, str(tmp_path / "cat.png"))
    assert str(error.value) == (
        "no complete image was generated: the model ended its response without drawing one (seeds [6]); the image "
        "did not fit in the token budget (seeds [5]): raise --max-new-tokens; the others were saved: "
        f"{tmp_path / 'cat_0.png'}")
    assert Image.open(tmp_path / "cat_0.png").getpixel((0, 0)) == (255, 0, 0)
    assert not (tmp_path / "cat_1.png").exists() and not (tmp_path / "cat_2.png").exists()

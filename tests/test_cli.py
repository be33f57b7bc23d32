"""The `emu3` command: the golden runs end to end, JSON output, errors, and the README's commands."""

import json
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from emu3.cli import main
from emu3.defaults import COMPACT_PLAUSIBILITY
from tests.conftest import REPO, parse_cli


def run_json(capsys, argv):
    assert main(argv + ["--json", "--quiet"]) == 0
    return json.loads(capsys.readouterr().out)


def test_generate_reproduces_the_golden_image(capsys, tmp_path, emu3_fixture, golden, golden_tensors):
    t2i = golden["t2i"]
    out = run_json(capsys, ["generate", t2i["prompt"], "--model", str(emu3_fixture / "Emu3-tiny"), "--greedy",
                            "--positive-prompt", "", "--negative-prompt", t2i["negative_prompt"],
                            "--image-area", "4096", "--ratio", "1:1", "--cfg", "3.0", "-o", str(tmp_path / "a.png")])
    assert out["token_ids"] == [t2i["output_ids"]]
    assert out["grid"] == [8, 8] and out["images"] == [str(tmp_path / "a.png")] and out["seconds"] > 0
    assert out["forwards"] == 75
    image = np.asarray(Image.open(tmp_path / "a.png")).astype(int)
    assert np.abs(image - golden_tensors["t2i_image"].numpy()).max() <= 1


def test_generate_speculative_greedy_is_the_golden_image(capsys, tmp_path, emu3_fixture, golden):
    t2i = golden["t2i"]
    out = run_json(capsys, ["generate", t2i["prompt"], "--model", str(emu3_fixture / "Emu3-tiny"), "--greedy",
                            "--positive-prompt", "", "--negative-prompt", t2i["negative_prompt"],
                            "--speculative", "8", "-o", str(tmp_path / "s.png")])
    assert out["token_ids"] == [t2i["output_ids"]] and out["forwards"] < 75


def test_generate_batch_with_seed(capsys, tmp_path, emu3_fixture):
    argv = ["generate", "two cats", "--model", str(emu3_fixture / "Emu3-tiny"), "--image-area", "1024",
            "--ratio", "2:1", "--batch", "2", "--seed", "7", "--top-k", "50", "-o", str(tmp_path / "b.png")]
    first = run_json(capsys, argv)
    assert first["images"] == [str(tmp_path / "b_0.png"), str(tmp_path / "b_1.png")]
    assert first["grid"] == [3, 6] and first["seeds"] == [7, 8]
    assert Image.open(tmp_path / "b_1.png").size == (48, 24)
    assert run_json(capsys, argv)["token_ids"] == first["token_ids"]


def test_chat_reproduces_the_golden_answer(capsys, emu3_fixture, golden):
    vqa = golden["vqa"]
    out = run_json(capsys, ["chat", vqa["question"], "--model", str(emu3_fixture / "Emu3-tiny"),
                            "--image", str(emu3_fixture / "input.png"), "--greedy", "--max-new-tokens", "24"])
    assert out["token_ids"] == vqa["output_ids"]
    assert isinstance(out["text"], str)


def test_reconstruct_image(capsys, tmp_path, emu3_fixture, golden_tensors):
    out = run_json(capsys, ["reconstruct", str(emu3_fixture / "input.png"), "--vision-tokenizer",
                            str(emu3_fixture / "Emu3-VisionTokenizer-tiny"), "-o", str(tmp_path / "r.png")])
    assert out["codes"] == golden_tensors["vq_codes"][0].tolist()
    assert out["codes_shape"] == [6, 8] and out["output"] == str(tmp_path / "r.png")
    assert np.isfinite(out["psnr"]) and Image.open(tmp_path / "r.png").size == (64, 48)


def test_reconstruct_frames_folder(capsys, tmp_path, emu3_fixture):
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(frames / f"{i:03d}.png")
    out = run_json(capsys, ["reconstruct", str(frames), "--vision-tokenizer",
                            str(emu3_fixture / "Emu3-VisionTokenizer-tiny"), "-o", str(tmp_path / "clip.gif")])
    assert out["codes_shape"][0] == 2  # 6 frames -> padded to 8 -> 2 latent frames
    assert Image.open(tmp_path / "clip.gif").n_frames == 6


@pytest.mark.parametrize("argv,message", [
    (["generate", "x", "--model", "/nonexistent", "-o", "o.png"], "does not exist"),
    (["generate", "x", "--model", "{fixture}/Emu3-tiny", "--ratio", "7", "-o", "{tmp}/o.png"], "ratio"),
    (["generate", "x", "--model", "{fixture}/Emu3-tiny", "--batch", "0", "-o", "{tmp}/o.png"], "--batch"),
    (["generate", "x", "--model", "{fixture}/Emu3-tiny", "--image-area", "100000000", "-o", "{tmp}/o.png"],
     "exceeds the model's context"),
    (["generate", "x", "--model", "{fixture}/Emu3-tiny", "--speculative", "-1", "-o", "{tmp}/o.png"],
     "--speculative"),
    (["generate", "x", "--model", "{fixture}/Emu3-tiny", "--image-area", "1024", "--batch", "1000000",
      "-o", "{tmp}/o.png"], "Use fewer images per batch"),
    # An output that cannot be written is refused before the model is even looked for.
    (["generate", "x", "--model", "/nonexistent", "-o", "{tmp}/noext"], "no suffix names no image format"),
    (["generate", "x", "--model", "/nonexistent", "-o", "{tmp}/o.xyz"], ".xyz names no image format"),
    (["generate", "x", "--model", "/nonexistent", "-o", "{tmp}/o.xbm"], ".xbm names no image format"),  # 1-bit only
    (["generate", "x", "--model", "/nonexistent", "-o", "{tmp}/o.h5"], ".h5 names no image format"),  # no plugin
    (["generate", "x", "--model", "/nonexistent", "-o", "{tmp}"], "is a folder"),
    (["chat", "q", "--model", "{fixture}/Emu3-tiny", "--image", "{tmp}/missing.png"], "missing.png"),
    (["chat", "q", "--model", "{fixture}/Emu3-tiny", "--dtype", "int3"], "unknown dtype"),
    (["reconstruct", "{tmp}/corrupt.png", "--vision-tokenizer", "{fixture}/Emu3-VisionTokenizer-tiny",
      "-o", "{tmp}/r.png"], "corrupt.png"),
    (["reconstruct", "{tmp}/mixed", "--vision-tokenizer", "{fixture}/Emu3-VisionTokenizer-tiny", "-o", "{tmp}/r.gif"],
     "same size: frame 1 is 64x32, frame 0 64x64"),
])
def test_bad_input_exits_2_with_a_message(capsys, tmp_path, emu3_fixture, argv, message):
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    (tmp_path / "mixed").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "mixed" / "0.png")
    Image.new("RGB", (64, 32)).save(tmp_path / "mixed" / "1.png")
    argv = [a.format(fixture=emu3_fixture, tmp=tmp_path) for a in argv]
    assert main(argv + ["--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"emu3 {argv[0]}: error:") and message in err
    assert "Traceback" not in err


def test_a_video_without_a_video_reader_exits_2_naming_the_package(capsys, tmp_path, emu3_fixture, monkeypatch):
    for name in ("av", "imageio", "imageio.v3"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails: as on a machine without them
    (tmp_path / "clip.mp4").write_bytes(b"not read")
    assert main(["reconstruct", str(tmp_path / "clip.mp4"), "--vision-tokenizer",
                 str(emu3_fixture / "Emu3-VisionTokenizer-tiny"), "-o", str(tmp_path / "r.gif")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("emu3 reconstruct: error: reading the video file") and "pip install av" in err


def test_reconstruct_into_a_folder_replaces_only_its_own_frames(capsys, tmp_path, emu3_fixture):
    vq = str(emu3_fixture / "Emu3-VisionTokenizer-tiny")
    clip = tmp_path / "clip"
    clip.mkdir()
    for i in range(3):
        Image.open(emu3_fixture / "input.png").save(clip / f"{i}.png")
    out = tmp_path / "frames"
    out.mkdir()
    (out / "notes.txt").write_text("kept")
    run_json(capsys, ["reconstruct", str(clip), "--vision-tokenizer", vq, "-o", str(out)])
    assert sorted(p.name for p in out.iterdir()) == [f"frame_0000{i}.png" for i in range(3)] + ["frames.json",
                                                                                               "notes.txt"]
    # a shorter result in the same folder replaces the longer clip whole: no frames of it are left
    payload = run_json(capsys, ["reconstruct", str(emu3_fixture / "input.png"), "--vision-tokenizer", vq, "-o", str(out)])
    assert payload["output"] == str(out)
    assert sorted(p.name for p in out.iterdir()) == ["frame_00000.png", "frames.json", "notes.txt"]


def test_frame_files_of_the_users_are_refused_before_any_loading(capsys, tmp_path, emu3_fixture):
    """An ffmpeg-style folder of frames was overwritten and its extra frames deleted without a word."""
    shots = tmp_path / "shots"
    shots.mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(shots / f"frame_0000{i}.png")
    before = {p.name: p.read_bytes() for p in shots.iterdir()}
    assert main(["reconstruct", str(shots / "frame_00002.png"), "--vision-tokenizer", "/nonexistent",
                 "-o", str(shots), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "holds frame files this did not write (frame_00000.png and 3 more)" in err
    assert {p.name: p.read_bytes() for p in shots.iterdir()} == before


@pytest.mark.parametrize("name, message", [("clip.png", "cannot be written as one .png file"),
                                           ("clip.mp4", "cannot be written as one .mp4 file"),
                                           ("taken", "exists and is not a folder")])
def test_a_clip_output_that_cannot_hold_frames_is_refused_before_any_loading(capsys, tmp_path, emu3_fixture,
                                                                             name, message):
    (tmp_path / "taken").write_text("a file of the user's")
    clip = tmp_path / "clip"
    clip.mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8)).save(clip / f"{i}.png")
    assert main(["reconstruct", str(clip), "--vision-tokenizer", "/nonexistent", "-o", str(tmp_path / name)]) == 2
    assert message in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "a file of the user's"


@pytest.mark.parametrize("seed", ["-1", "99999999999999999999"])
def test_a_bad_seed_is_refused_by_the_parser(capsys, tmp_path, seed):
    with pytest.raises(SystemExit) as done:
        main(["generate", "x", "-o", str(tmp_path / "x.png"), "--seed", seed])
    assert done.value.code == 2 and "argument --seed: a seed is a whole number from 0 to" in capsys.readouterr().err


def test_chat_answers_within_the_models_context(capsys, emu3_fixture, tiny):
    """The default --max-new-tokens (1024) is cut to what the context leaves, as Emu3.5's chat does."""
    from emu3.prompting import Turn, chat_prompt

    question = "why" + " a" * 1000
    room = tiny.lm.config.max_position_embeddings - len(chat_prompt(tiny.tokenizer, [Turn(question)]))
    assert 0 < room < 30
    out = run_json(capsys, ["chat", question, "--model", str(emu3_fixture / "Emu3-tiny")])
    assert 0 < len(out["token_ids"]) <= room


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_opens_with_the_main_job_and_the_test_command():
    main_job, tests = readme_commands()[:2]
    assert main_job.startswith("emu3 generate ")
    assert tests in (REPO / ".ci" / "run").read_text().splitlines()


def test_readme_main_job_runs(tmp_path, emu3_fixture):
    argv = shlex.split(readme_commands()[0])
    argv[argv.index("-o") + 1] = str(tmp_path / "out.png")
    proc = subprocess.run([sys.executable, "-m", "emu3", *argv[1:]], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "out.png").size == (64, 64)


@pytest.mark.parametrize("command", [["generate", "x", "-o", "o.png"], ["video", "x", "-o", "f"], ["eval", "shapes"]])
@pytest.mark.parametrize("value", ["1", "-0.1", "high"])
def test_a_bad_plausibility_is_refused_by_the_parser_before_any_loading(capsys, command, value):
    with pytest.raises(SystemExit) as done:
        main(command + ["--model", "/nonexistent", "--plausibility", value])
    assert done.value.code == 2
    assert f"argument --plausibility: plausibility is a number in [0, 1), got {value!r}" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["generate", "x", "-o", "o.png"], ["video", "x", "-o", "f"], ["eval", "shapes"],
                                     ["story", "x", "-o", "s"]])
@pytest.mark.parametrize("option,value,kind", [("--cfg", "nan", "> 0"), ("--cfg", "inf", "> 0"), ("--cfg", "0", "> 0"),
                                               ("--temperature", "nan", ">= 0"), ("--temperature", "-1", ">= 0")])
def test_non_finite_guidance_and_temperature_are_refused_before_any_loading(capsys, command, option, value, kind):
    """NaN passed `cfg <= 0` and turned every guided score into NaN: a flat picture of code 0."""
    if command[0] == "story" and option == "--temperature":
        option = "--image-temperature"
    with pytest.raises(SystemExit) as done:
        main(command + ["--model", "/nonexistent", option, value])
    assert done.value.code == 2
    assert f"is a finite number {kind}, got {value!r}" in capsys.readouterr().err


def test_plausibility_defaults_to_the_models_own(tiny):
    import emu3
    from emu3.cli import _sampling

    parse = parse_cli
    bundled = emu3.load()  # a compact-vocabulary model: the constraint on
    assert _sampling(parse(["generate", "x", "-o", "o.png"]), bundled).plausibility == COMPACT_PLAUSIBILITY > 0
    assert _sampling(parse(["generate", "x", "-o", "o.png", "--plausibility", "0"]), bundled).plausibility == 0
    assert _sampling(parse(["generate", "x", "-o", "o.png"]), tiny).plausibility == 0  # official: off
    assert _sampling(parse(["video", "x", "-o", "f", "--plausibility", "0.2"]), tiny).plausibility == 0.2


@pytest.mark.parametrize("device", ["mps", "meta", "xpu", "cuda:99"])
def test_a_device_this_machine_lacks_exits_2(capsys, device):
    """Only CUDA was checked: --device mps or meta ended in a RuntimeError traceback."""
    if device == "cuda:99" and not torch.cuda.is_available():
        device = "cuda"
    assert main(["generate", "x", "-o", "x.png", "--device", device, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("emu3 generate: error: --device") and "available" in err


def test_reconstruct_dtype_sets_the_vision_tokenizers(monkeypatch, tmp_path, emu3_fixture):
    """--dtype was accepted and ignored: the vision tokenizer always loaded in fp32."""
    from emu3.pipelines.loading import Emu3

    seen = []
    real = Emu3.load
    monkeypatch.setattr(Emu3, "load", classmethod(lambda cls, *a, **kw: seen.append(kw["vq_dtype"]) or real(*a, **kw)))
    vq = str(emu3_fixture / "Emu3-VisionTokenizer-tiny")
    for dtype in ("auto", "bf16"):
        assert main(["reconstruct", str(emu3_fixture / "input.png"), "--vision-tokenizer", vq, "--dtype", dtype,
                     "-o", str(tmp_path / f"{dtype}.png"), "--quiet"]) == 0
    assert seen == [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("command", [["generate", "x", "-o", "o.png"], ["story", "x", "-o", "s"]])
def test_a_zero_image_area_is_refused(capsys, command):
    """`image_area or default` took --image-area 0 for the default."""
    with pytest.raises(SystemExit):
        main(command + ["--model", "/nonexistent", "--image-area", "0"])
    assert "--image-area is a whole number of at least 1, got '0'" in capsys.readouterr().err


def test_a_negative_eval_seed_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "shapes", "--seed", "-5"])
    assert "a seed is a whole number from 0 to" in capsys.readouterr().err


def test_a_sampling_option_makes_chat_sample_and_conflicts_with_greedy(capsys):
    """`chat --temperature 0.7` was silently greedy: chat decodes greedily unless told otherwise."""
    from emu3.cli import _sampling

    def sampling(argv):
        return _sampling(parse_cli(argv))

    assert sampling(["chat", "q"]).is_greedy
    assert not sampling(["chat", "q", "--temperature", "0.7"]).is_greedy
    assert not sampling(["chat", "q", "--sample"]).is_greedy and sampling(["chat", "q", "--sample"]).temperature == 1
    assert sampling(["chat", "q", "--top-p", "0.9"]).top_p == 0.9
    assert not sampling(["generate", "x", "-o", "o.png"]).is_greedy and sampling(["generate", "x", "-o", "o.png",
                                                                                    "--greedy"]).is_greedy
    assert sampling(["video", "x", "-o", "f"]).top_k == 2048
    assert main(["chat", "q", "--model", "/nonexistent", "--greedy", "--top-k", "5"]) == 2
    assert "sampling options (--top-k) do nothing with --greedy; drop them or --greedy" in capsys.readouterr().err
    for option, value in (("--top-k", "0"), ("--top-p", "0"), ("--top-p", "nan")):
        with pytest.raises(SystemExit):
            main(["chat", "q", option, value])

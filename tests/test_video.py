"""Video generation and continuation: the training layout, determinism, the CLI, the eval's video part."""

from __future__ import annotations

import json
import random

import pytest
import torch
from PIL import Image

from emu3.generation import SamplingConfig
from emu3.prompting import image_header, parse_image
from emu3.train.examples import text_to_visual
from tests.conftest import save_compact_model

CAPTION = "a red circle moving right"
GREEDY = SamplingConfig(greedy=True)


def _frames(n: int = 4) -> list[Image.Image]:
    from emu3.datasets.shapes import render_video, sample_video

    return render_video(sample_video(random.Random(0), 8, split="heldout"), 64)[::2][:n]


@pytest.fixture(scope="module")
def compact_model(emu3_fixture, tmp_path_factory):
    """A tiny compact-vocabulary model (random weights) with a 16-code vision tokenizer at 32x32."""
    from emu3.compact_vocab import CompactTokenizer
    from emu3.pipelines import Emu3
    from emu3.tokenizer import Tokenizer

    compact = CompactTokenizer.build(Tokenizer.from_dir(emu3_fixture / "Emu3-tiny"), [CAPTION], codebook_size=16)
    return Emu3.load(save_compact_model(tmp_path_factory.mktemp("compact"), compact, emu3_fixture, std=0.3))


@pytest.mark.parametrize("caption", [CAPTION, ""])
def test_prefix_is_the_training_layout_token_for_token(tiny, compact_model, caption):
    from emu3.pipelines.video import video_prefix

    for m, (h, w) in ((tiny, (8, 8)), (compact_model, (4, 4))):
        codes = torch.randint(0, m.vocab.codebook_size, (3, h, w), generator=torch.Generator().manual_seed(1))
        example = text_to_visual(m.tokenizer, caption, list(codes), task="video", vocab=m.vocab)
        assert video_prefix(m.tokenizer, caption, list(codes), m.vocab) == example.ids
        # The prompt of frame k is a prefix of the training sequence, up to the next block's header.
        prompt = video_prefix(m.tokenizer, caption, list(codes[:2]), m.vocab) + image_header(m.tokenizer, h, w, m.vocab)
        assert example.ids[: len(prompt)] == prompt
        # Caption dropout deletes the prompt span: that is the unconditional context.
        start, end = example.prompt_span
        assert video_prefix(m.tokenizer, "", list(codes), m.vocab) == example.ids[:start] + example.ids[end:]


def test_text_to_video_greedy_is_deterministic_and_frame_one_is_text_to_image(tiny):
    from emu3.pipelines.text_to_image import text_to_image
    from emu3.pipelines.video import generate_video

    calls = []
    result = generate_video(tiny, CAPTION, num_frames=2, sampling=GREEDY, seed=0,
                            progress=lambda done, total: calls.append((done, total)))
    assert len(result.frames) == 2 and all(f.size == (64, 64) for f in result.frames)
    assert result.codes.shape == (2, 8, 8) and result.grid == (8, 8) and result.num_context == 0
    assert result.seeds == [0, 1]
    assert result.token_ids == text_to_visual(tiny.tokenizer, CAPTION, list(result.codes), vocab=tiny.vocab).ids
    assert calls[-1] == (2 * 75, 2 * 75) and len(calls) == 2 * 75
    again = generate_video(tiny, CAPTION, num_frames=2, sampling=GREEDY, seed=5)
    assert torch.equal(again.codes, result.codes)
    image = text_to_image(tiny, CAPTION, cfg=3.0, positive_prompt="", negative_prompt="", sampling=GREEDY)
    assert torch.equal(parse_image(image.token_ids[0], tiny.vocab), result.codes[0])


def test_continuation_matches_the_engine_on_the_training_prefix(tiny):
    from emu3.generation.engine import generate_images
    from emu3.pipelines.video import generate_video, video_prefix

    context = _frames(2)
    result = generate_video(tiny, CAPTION, context_frames=context, num_frames=1, sampling=GREEDY, cfg=2.0)
    assert result.num_context == 2 and len(result.frames) == 3 and result.codes.shape == (3, 8, 8)
    grids = [tiny.encode_image(f) for f in context]
    assert all(torch.equal(g, c) for g, c in zip(grids, result.codes))
    header = image_header(tiny.tokenizer, 8, 8, tiny.vocab)
    out = generate_images(tiny.lm, [video_prefix(tiny.tokenizer, CAPTION, grids, tiny.vocab) + header], [(8, 8)],
                          vocab=tiny.vocab, sampling=GREEDY, cfg_scale=2.0,
                          negative_prompts=[video_prefix(tiny.tokenizer, "", grids, tiny.vocab) + header])
    assert torch.equal(parse_image(out[0], tiny.vocab), result.codes[2])


def test_seeded_sampling_repeats_and_compact_vocab_works(compact_model):
    from emu3.pipelines.video import generate_video

    a = generate_video(compact_model, CAPTION, context_frames=_frames(1), num_frames=2, seed=3)
    b = generate_video(compact_model, CAPTION, context_frames=_frames(1), num_frames=2, seed=3)
    assert torch.equal(a.codes, b.codes) and a.codes.shape == (3, 4, 4)
    assert all(f.size == (32, 32) for f in a.frames)
    assert a.token_ids == text_to_visual(compact_model.tokenizer, CAPTION, list(a.codes), vocab=compact_model.vocab).ids
    assert max(a.token_ids) < compact_model.vocab.size


def test_bad_arguments_are_refused_before_any_work(tiny):
    from emu3.pipelines.video import generate_video

    with pytest.raises(ValueError, match="num_frames"):
        generate_video(tiny, CAPTION, num_frames=0)
    with pytest.raises(ValueError, match="context length of 1024"):
        generate_video(tiny, CAPTION, num_frames=20)


def test_cli_writes_a_gif_and_a_folder(emu3_fixture, tmp_path, capsys):
    from emu3.cli import main

    model = str(emu3_fixture / "Emu3-tiny")
    _frames(1)[0].save(tmp_path / "f0.png")
    assert main(["video", CAPTION, "--model", model, "-o", str(tmp_path / "clip.gif"), "--frames", "2",
                 "--context", str(tmp_path / "f0.png"), "--greedy", "--quiet", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["frames"] == 3 and payload["context_frames"] == 1 and payload["grid"] == [8, 8]
    with Image.open(tmp_path / "clip.gif") as gif:
        assert gif.n_frames == 3 and gif.size == (64, 64)
    assert main(["video", CAPTION, "--model", model, "-o", str(tmp_path / "frames"), "--frames", "2",
                 "--seed", "0", "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == ["frame_00000.png", "frame_00001.png",
                                                                       "frames.json"]


@pytest.mark.parametrize("extra, message", [
    (["--frames", "0"], "--frames must be >= 1"),
    (["--context", "missing.png"], "not found"),
    (["--context", "corrupt.png"], "cannot read image"),
    (["--frames", "1000"], "context length"),
    (["-o", "clip.png", "--frames", "2"], "2 frames cannot be written as one .png file"),
])
def test_cli_bad_input_exits_2_with_one_line(emu3_fixture, tmp_path, capsys, monkeypatch, extra, message):
    from emu3.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    code = main(["video", CAPTION, "--model", str(emu3_fixture / "Emu3-tiny"), "-o", "x.gif", "--quiet", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err and err.startswith("emu3 video: error:")


def test_eval_video_part(tiny):
    from emu3.eval.cli import evaluate_model
    from emu3.eval.shapes import eval_videos, format_report, score_videos

    items = eval_videos(2, seed=0)
    assert [len(i.frames) for i in items] == [4, 4] and items[0].frames[0].size == (64, 64)
    truth = score_videos(items, [i.frames[2:] for i in items])
    assert truth.found == 1.0 and truth.position_error < 0.02 and truth.n_continued == 2
    report = evaluate_model(tiny, n_prompts=0, n_questions=0, n_videos=1)
    assert report.images is None and report.answers is None
    assert report.videos.n_videos == 1 and 0.0 <= report.videos.found <= 1.0
    assert set(report.video_baselines) == {"still", "tokenizer"} and report.tokenizer is None
    json.dumps(report.to_dict())
    assert "position error" in format_report(report) and "tokenizer" in format_report(report)


def test_eval_draws_pictures_and_clips_with_the_given_sampling(tiny, monkeypatch):
    import importlib

    from emu3.eval.cli import evaluate_model

    t2i, video = (importlib.import_module(f"emu3.pipelines.{name}") for name in ("text_to_image", "video"))

    seen = []
    for module, name in ((t2i, "text_to_image"), (video, "generate_video")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, real=real, **k: seen.append(k["sampling"]) or real(*a, **k))
    sampling = SamplingConfig(top_k=3, temperature=0.5)
    evaluate_model(tiny, n_prompts=1, n_questions=0, n_videos=1, sampling=sampling)
    assert seen == [sampling, sampling]
    seen.clear()
    evaluate_model(tiny, n_prompts=1, n_questions=0, n_videos=1)
    assert seen == [t2i.default_sampling(tiny)] * 2 == [SamplingConfig(top_k=2048)] * 2  # official: no plausibility


def test_a_non_square_context_continues_on_the_bundled_model():
    """The bundled processor allows exactly 4096 pixels, so a 4:3 context frame (72x56 for a 7x9 grid)
    was refused after loading: context frames are now encoded at the clip's own pixel size."""
    import emu3
    from emu3.pipelines.video import generate_video

    m = emu3.load()
    frame = Image.new("RGB", (80, 60), (255, 255, 255))
    result = generate_video(m, "a red circle moving right", context_frames=[frame], num_frames=1, seed=0)
    assert result.grid == (7, 9) and [f.size for f in result.frames] == [(72, 56), (72, 56)]

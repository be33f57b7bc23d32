"""ShapesEval (emu3.eval.shapes): the analyzer validated on ground truth, shuffled pairs and degraded
pictures; answer matching; motion scoring; the seeded benchmark report."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from emu3.datasets.shapes import (COLORS, SHAPES, Obj, Scene, parse_caption, render, render_video, sample_video,
                                  scene_for)
from emu3.eval.shapes import (analyze, answer_matches, compare_motion, eval_prompts, eval_questions, evaluate_shapes,
                              format_report, normalize_answer, score_answers, score_images, track_objects,
                              vqa_accuracy)


def degrade(image: Image.Image, seed: int, sigma: float = 10.0, blur: float = 0.8) -> Image.Image:
    """Slight blur plus gaussian noise, the way a VQ reconstruction is not pixel-exact."""
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float32)
    pixels += np.random.default_rng(seed).normal(0.0, sigma, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def jpeg(image: Image.Image, quality: int = 75) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


@pytest.fixture(scope="module")
def prompts():
    return eval_prompts(300, seed=0)


@pytest.fixture(scope="module")
def truth(prompts):
    """Ground truth rendered from the prompt text alone (parse, lay out, draw)."""
    return [render(scene_for(parse_caption(p.text), i)) for i, p in enumerate(prompts)]


def test_ground_truth_scores_near_one(prompts, truth):
    scores = score_images(prompts, truth)
    assert scores.overall >= 0.97, scores.failures[:3]
    assert set(scores.categories) == {"color", "shape", "object", "size", "count", "position", "relation", "background"}
    assert min(scores.categories.values()) >= 0.95


def test_ground_truth_scores_near_one_at_the_smallest_side_read(prompts):
    """The analyzer claimed to read 16-pixel pictures; at 24 it failed 49 of 300 ground truths."""
    from emu3.eval.shapes.analyze import MIN_SIDE

    small = [render(scene_for(parse_caption(p.text), i), MIN_SIDE) for i, p in enumerate(prompts[:100])]
    assert score_images(prompts[:100], small).overall >= 0.97
    with pytest.raises(ValueError, match=f"at least {MIN_SIDE}x{MIN_SIDE}"):
        analyze(render(prompts[0].scene, MIN_SIDE - 8))


def test_shuffled_pairs_score_low(prompts, truth):
    shuffled = truth[1:] + truth[:1]
    assert score_images(prompts, shuffled).overall <= 0.3


def test_noise_and_blur_still_score_high(prompts, truth):
    degraded = [degrade(image, i) for i, image in enumerate(truth)]
    assert score_images(prompts, degraded).overall >= 0.9
    assert score_images(prompts[:100], [jpeg(image) for image in degraded[:100]]).overall >= 0.85


def test_larger_pictures_read_the_same(prompts):
    images = [degrade(render(p.scene, 128), i) for i, p in enumerate(prompts[:60])]
    assert score_images(prompts[:60], images).overall >= 0.95


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", ["small", "large"])
def test_analyzer_reads_single_objects_exactly(shape, size):
    for i, color in enumerate(c for c in COLORS if c != "green"):
        x, y = 0.3 + 0.05 * i, 0.7 - 0.05 * i
        analysis = analyze(render(Scene("green", [Obj(shape, color, size, x, y)])))
        assert analysis.background == "green"
        o, = analysis.objects
        assert (o.color, o.shape, o.size) == (color, shape, size)
        assert abs(o.x - x) < 1 / 64 and abs(o.y - y) < 1 / 64
        assert o.fit > 0.95


def test_analyzer_ignores_noise_and_rejects_bad_input():
    noise = np.random.default_rng(0).normal(0, 12, (64, 64, 3)) + np.array([15, 15, 15])
    assert analyze(np.clip(noise, 0, 255)).objects == ()
    assert analyze(render(Scene("white"))).objects == ()
    with pytest.raises(ValueError, match="square pictures"):
        analyze(np.zeros((64, 32, 3)))
    with pytest.raises(ValueError, match="RGB array"):
        analyze(np.zeros((64, 64)))


def test_answer_normalisation():
    assert normalize_answer("Two.") == "2" and normalize_answer("The Middle!") == "center"
    assert normalize_answer("Circles") == "circle" and normalize_answer("upper left") == "top left"
    assert answer_matches("It's red.", "red") and answer_matches("there are three", "3")
    assert not answer_matches("red and blue", "red") and not answer_matches("no", "yes")
    for said, cell in [("in the center", "center"), ("in the middle", "center"), ("on the left", "left"),
                       ("on the right side", "right"), ("at the top", "top"), ("it is on the left", "left"),
                       ("top center", "top"), ("middle left", "left"), ("at the top left", "top left")]:
        assert answer_matches(said, cell), said  # the world's own place phrases were scored wrong
    assert not answer_matches("on the left", "top left") and not answer_matches("center left", "center")
    assert vqa_accuracy([("yes", "yes"), ("2", "two"), ("blue", "red"), ("square", "circle")]) == 0.5
    with pytest.raises(ValueError):
        vqa_accuracy([])


def test_train_split_questions_name_no_held_out_composition():
    """eval_questions drew held-out questions whatever the split ("is there a yellow triangle?")."""
    from emu3.datasets.shapes import HELD_OUT_PAIRS

    for item in eval_questions(400, seed=0, split="train"):
        assert not any(f"{c} {s}" in item.question for c, s in HELD_OUT_PAIRS), item.question


def test_answer_scoring_by_kind():
    items = eval_questions(60, seed=1)
    assert items == eval_questions(60, seed=1) and items[0].image.size == (64, 64)
    perfect = score_answers(items, [item.answer.upper() + "." for item in items])
    assert perfect.accuracy == 1.0 and sum(perfect.kind_counts.values()) == 60
    always_yes = score_answers(items, ["yes"] * len(items))
    assert always_yes.kinds.get("color", 0.0) == 0.0 and always_yes.accuracy < 0.5
    with pytest.raises(ValueError, match="60 questions but 1 answers"):
        score_answers(items, ["yes"])


def test_answer_scores_by_whether_the_subject_is_a_held_out_pair():
    from emu3.datasets.shapes import HELD_OUT_PAIRS

    items = eval_questions(300, seed=2)
    asked = [item for item in items if item.kind in ("color", "shape")]
    assert asked and all(item.subject is not None for item in asked)
    assert all(item.subject is None for item in items if item.kind not in ("color", "shape"))
    assert all((item.answer in item.subject) and (item.subject[0] in item.question or item.subject[1] in item.question)
               for item in asked)
    prior = score_answers(items, ["?" if item.subject in HELD_OUT_PAIRS else item.answer for item in items])
    assert prior.subjects == {"held-out pair": 0.0, "other object": 1.0}
    assert sum(prior.subject_counts.values()) == len(asked) and prior.subject_counts["held-out pair"] > 5
    assert "held-out pair" in format_report(evaluate_shapes(answer=lambda image, question: "red", n_questions=40))
    training = score_answers(eval_questions(100, seed=2, split="train"), ["red"] * 100)
    assert set(training.subjects) == {"other object"}


def test_yes_no_answers_are_scored_by_form_and_truth():
    """A model answering "no" to every question about a place scores 0 on the "position, yes" row."""
    import re

    items = eval_questions(400, seed=3)
    asked = [item for item in items if item.kind == "yes_no"]
    assert all(item.form is not None for item in asked) and all(item.form is None for item in items
                                                                 if item.kind != "yes_no")
    relation = re.compile(r"is the \w+ \w+ .+ the \w+ \w+\?")
    for item in asked:  # the form is what the question's wording says
        expected = ("presence" if item.question.startswith("is there ") else
                    "relation" if relation.fullmatch(item.question) else "position")
        assert item.form == expected, item
    always_no = score_answers(items, ["no" if item.form in ("position", "relation") else item.answer
                                      for item in items])
    assert always_no.forms["position, yes"] == always_no.forms["relation, yes"] == 0.0
    assert always_no.forms["position, no"] == always_no.forms["presence, yes"] == 1.0
    assert sum(always_no.form_counts.values()) == len(asked)
    assert list(always_no.forms) == [k for k in ("presence, yes", "presence, no", "position, yes", "position, no",
                                                 "relation, yes", "relation, no") if k in always_no.forms]
    text = format_report(evaluate_shapes(answer=lambda image, question: "no", n_questions=60))
    assert "yes/no questions by form" in text and "position, yes" in text


def test_motion_scores_ground_truth_high_and_wrong_motion_low():
    video = sample_video(random.Random(4), 8, max_objects=2)
    frames = render_video(video)
    reference = video.tracks()
    assert set(track_objects(frames)) == set(reference)
    exact = compare_motion([degrade(f, i) for i, f in enumerate(frames)], reference)
    assert exact.found == 1.0 and exact.direction_accuracy == 1.0 and exact.position_error < 0.02
    reversed_clip = compare_motion(frames[::-1], reference)
    assert reversed_clip.direction_accuracy <= 0.5 and reversed_clip.position_error > exact.position_error
    frozen = compare_motion([frames[0]] * 8, reference)
    assert frozen.direction_accuracy == 0.0
    empty = compare_motion([render(Scene(video.background))] * 8, reference)
    assert empty.found == 0.0 and math.isnan(empty.position_error)
    with pytest.raises(ValueError, match="expected \\(4, 2\\)"):
        compare_motion(frames[:4], reference)


def test_evaluate_shapes_report_is_seeded_and_serialisable():
    def generate(prompt, seed):
        return render(scene_for(parse_caption(prompt), seed))

    def answer(image, question):
        return "yes"

    report = evaluate_shapes(generate, answer, n_prompts=30, n_questions=30, seed=3)
    assert report.images.overall == 1.0 and report.answers.n_questions == 30
    assert report.images.overall_se == 0.0 and report.images.claims_se == 0.0
    again = evaluate_shapes(generate, answer, n_prompts=30, n_questions=30, seed=3)
    assert json.dumps(report.to_dict()) == json.dumps(again.to_dict())
    text = format_report(report)
    assert "overall" in text and "relation" in text and "yes_no" in text
    assert [p.text for p in eval_prompts(30, seed=3)] != [p.text for p in eval_prompts(30, seed=4)]
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate_shapes()
    with pytest.raises(ValueError, match="unknown split"):
        eval_prompts(5, split="test")


def test_readme_shapes_example_runs(tmp_path, monkeypatch, capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## The Shapes world and ShapesEval", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert Image.open(tmp_path / "truth.png").size == (64, 64)
    assert "overall            1.000" in capsys.readouterr().out


def test_tokenizer_round_trip_scores_identity_perfectly_and_blur_lower():
    from emu3.eval.shapes import psnr

    exact = evaluate_shapes(reconstruct=lambda image: image.copy(), n_prompts=20)
    assert exact.tokenizer.round_trip == 1.0 and exact.tokenizer.psnr == 100.0 and exact.images is None
    blurred = evaluate_shapes(reconstruct=lambda image: image.filter(ImageFilter.GaussianBlur(3)), n_prompts=20)
    assert 10 < blurred.tokenizer.psnr < 30 and blurred.tokenizer.round_trip < exact.tokenizer.round_trip
    assert "round trip" in format_report(blurred)
    assert set(blurred.tokenizer.round_trip_categories) <= set(exact.tokenizer.round_trip_categories)
    assert all(v == 1.0 for v in exact.tokenizer.round_trip_categories.values())
    assert min(blurred.tokenizer.round_trip_categories.values()) < 1.0
    both = evaluate_shapes(lambda prompt, seed: render(scene_for(parse_caption(prompt), seed)),
                           reconstruct=lambda image: image.filter(ImageFilter.GaussianBlur(3)), n_prompts=20)
    header, overall = [line for line in format_report(both).splitlines() if line.startswith(("text to", "overall"))][:2]
    assert header.split()[-1] == "tokenizer"
    assert float(overall.split()[-1]) == pytest.approx(blurred.tokenizer.round_trip, abs=1e-3)
    image = render(scene_for(parse_caption("a red circle"), 0))
    noisy = Image.fromarray((np.asarray(image, np.float64) - 12.75).astype(np.uint8))  # palette values are >= 15
    assert abs(psnr(image, noisy) - 20 * math.log10(255 / 12.75)) < 0.5  # a uniform shift of 5% of full scale


def test_ground_truth_continuations_score_full_direction_accuracy():
    from emu3.eval.shapes import eval_videos, score_videos

    items = eval_videos(40, seed=1)
    scores = score_videos(items, [item.frames[2:] for item in items])
    assert scores.found == 1.0 and scores.direction_accuracy == 1.0 and scores.position_error < 0.01


def test_video_baselines_still_clips_score_no_direction_and_the_round_trip_bounds_a_model():
    from emu3.eval.shapes import eval_videos, video_baselines

    items = eval_videos(30, seed=2)
    exact = video_baselines(items, lambda image: image.copy())
    assert set(exact) == {"still", "tokenizer"}
    still, tokenizer = exact["still"], exact["tokenizer"]
    assert still.found == 1.0 and still.direction_accuracy == 0.0 and still.position_error > 0.05  # objects move
    assert tokenizer.found == 1.0 and tokenizer.direction_accuracy == 1.0 and tokenizer.position_error < 0.01
    blurred = video_baselines(items, lambda image: image.filter(ImageFilter.GaussianBlur(3)))["tokenizer"]
    assert blurred.found < 1.0 and blurred.direction_accuracy < 1.0
    assert set(video_baselines(items)) == {"still"}


def test_report_shows_video_baselines_beside_the_model_and_skips_prompts_when_asked():
    def continue_video(caption, context, seed):
        return [context[-1]] * 2  # a model that stands still scores what the "still" baseline does

    report = evaluate_shapes(continue_video=continue_video, reconstruct=lambda image: image.copy(), n_prompts=0,
                             n_videos=6)
    assert report.tokenizer is None  # no prompts drawn
    assert report.videos == report.video_baselines["still"]
    table = format_report(report).splitlines()
    header = next(line for line in table if line.startswith("video"))
    assert header.split()[5:7] == ["still", "tokenizer"]
    direction = next(line for line in table if line.startswith("direction")).split()
    assert [float(x) for x in direction[-2:]] == [0.0, 1.0]
    assert json.loads(json.dumps(report.to_dict()))["video_baselines"]["tokenizer"]["found"] == 1.0
    bare = format_report(dataclasses.replace(report, video_baselines={}))  # a report from before the baselines
    assert "still" not in bare and "position error" in bare
    with pytest.raises(ValueError, match="n_prompts"):
        evaluate_shapes(reconstruct=lambda image: image.copy(), n_prompts=0)


def test_still_baseline_passes_through_the_tokenizer_like_a_model_would():
    from emu3.eval.shapes import eval_videos, video_baselines

    items = eval_videos(10, seed=2)
    blank = Image.new("RGB", (64, 64), (128, 128, 128))
    lost = video_baselines(items, lambda image: blank)  # a tokenizer that loses everything
    assert lost["still"].found == 0.0 and lost["tokenizer"].found == 0.0

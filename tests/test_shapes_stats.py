"""Standard errors of ShapesEval's scores (emu3.eval.shapes.stats): exact on small cases, and true to
the spread of scores over many seeds."""

from __future__ import annotations

import json
import math
import random

import pytest
from PIL import Image

from emu3.datasets.shapes import parse_caption, render, scene_for
from emu3.eval.shapes import evaluate_shapes, format_report, score_answers
from emu3.eval.shapes.benchmark import eval_questions
from emu3.eval.shapes.stats import mean, ratio_standard_error, standard_error


def test_standard_error_small_cases():
    assert standard_error([0, 1, 0, 1]) == pytest.approx(math.sqrt(1 / 12))
    assert standard_error([0.3, 0.3, 0.3]) == 0.0
    assert standard_error([1.0]) is None and standard_error([math.nan, 2.0]) is None
    assert mean([1.0, math.nan, 3.0]) == 2.0 and mean([math.nan]) is None


def test_ratio_standard_error_equals_item_standard_error_with_equal_denominators():
    numerators, denominators = [1, 2, 0, 3], [3, 3, 3, 3]
    fractions = [a / b for a, b in zip(numerators, denominators)]
    assert ratio_standard_error(numerators, denominators) == pytest.approx(standard_error(fractions))
    assert ratio_standard_error([1, 2, 0], [1, 3, 2]) == pytest.approx(0.25)  # by hand: residuals 0.5, 0.5, -1
    assert ratio_standard_error([1], [2]) is None and ratio_standard_error([0, 0], [0, 0]) is None
    with pytest.raises(ValueError, match="2 numerators but 3 denominators"):
        ratio_standard_error([1, 2], [1, 2, 3])


def test_standard_error_matches_the_spread_over_seeds():
    """A guesser right 30% of the time on 80 questions: the accuracy's spread over 300 seeds is what
    one seed's standard error says it is, within 15%."""
    items = eval_questions(80, seed=0)
    accuracies, errors = [], []
    for seed in range(300):
        rng = random.Random(seed)
        answers = [item.answer if rng.random() < 0.3 else "nothing" for item in items]
        scores = score_answers(items, answers)
        accuracies.append(scores.accuracy)
        errors.append(scores.accuracy_se)
    spread = standard_error(accuracies) * math.sqrt(len(accuracies))
    assert mean(errors) == pytest.approx(spread, rel=0.15)
    assert mean(accuracies) == pytest.approx(0.3, abs=0.02)


def test_report_shows_standard_errors():
    report = evaluate_shapes(answer=lambda image, question: "yes",
                             continue_video=lambda caption, context, seed: context, n_questions=40, n_videos=6, seed=2)
    a, v = report.answers, report.videos
    assert 0 < a.accuracy_se < 0.2 and v.found_se == 0.0 and v.position_error_se > 0
    text = format_report(report)
    assert "± s.e." in text and f"±{a.accuracy_se:.3f}" in text and f"±{v.position_error_se:.3f}" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["answers"]["accuracy_se"] == a.accuracy_se
    assert {"found_se", "direction_se", "position_error_se"} <= set(data["videos"])

    def half_drawn(prompt, seed):  # the ground truth for every second prompt, a white picture for the others
        return render(scene_for(parse_caption(prompt), seed)) if seed % 2 else Image.new("RGB", (64, 64), "white")

    images = evaluate_shapes(generate=half_drawn, n_prompts=10).images
    assert images.overall == 0.5 and images.overall_se == pytest.approx(standard_error([0, 1] * 5))
    assert 0 < images.claims_se < 0.3 and images.claims < 0.75

"""ShapesEval: measure generated pictures and answers against the Shapes world's ground truth.

    from emu3.eval.shapes import evaluate_shapes, format_report
    report = evaluate_shapes(generate=lambda prompt, seed: my_model(prompt, seed))
    print(format_report(report)); report.to_dict()

Modules: `analyze` (pixels -> background and objects: color, shape, size, position), `benchmark`
(seeded held-out prompts and questions, scores per claim category, the report table), `vqa`
(answer normalisation and matching), `motion` (object tracks across video frames, direction and
position error of a generated continuation), `stats` (means and standard errors of the scores).
The world itself (palette, claims, captions) lives in `emu3.datasets.shapes`. Nothing here imports
torch or runs a model.
"""

from emu3.eval.shapes.analyze import Analysis, Detected, analyze, fit_shape, palette_labels
from emu3.eval.shapes.benchmark import (AnswerScores, ImageScores, Prompt, QuestionItem, ShapesReport, TokenizerScores,
                                        VideoItem, VideoScores, eval_prompts, eval_questions, eval_videos,
                                        evaluate_shapes, format_report, psnr, score_answers, score_images,
                                        score_reconstructions, score_videos, video_baselines)
from emu3.eval.shapes.motion import MotionScore, compare_motion, track_objects
from emu3.eval.shapes.vqa import answer_matches, normalize_answer, vqa_accuracy

__all__ = [
    "Analysis", "Detected", "analyze", "fit_shape", "palette_labels",
    "AnswerScores", "ImageScores", "Prompt", "QuestionItem", "ShapesReport", "TokenizerScores", "VideoItem",
    "VideoScores", "eval_prompts", "eval_questions", "eval_videos", "evaluate_shapes", "format_report", "psnr",
    "score_answers", "score_images", "score_reconstructions", "score_videos", "video_baselines",
    "MotionScore", "compare_motion", "track_objects",
    "answer_matches", "normalize_answer", "vqa_accuracy",
]

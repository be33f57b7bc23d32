"""ShapesEval: the fixed, seeded benchmark of text-to-image and question answering in the Shapes world.

* `eval_prompts(n, seed, split)`: captions in canonical wording, with their descriptions (hence
  claims) and a reference scene each; by default from the held-out compositions.
* `score_images(prompts, images)`: analyze every picture, check its prompt's claims, and report
  the fraction of prompts whose claims all hold (`overall`, as GenEval does), the fraction of all
  claims that hold (`claims`), and the fraction per claim category.
* `eval_questions(n, seed, split, image_size)` / `score_answers(items, answers)`: rendered
  ground-truth scenes with one question each, and answer accuracy overall, per question kind, and
  for color and shape questions by their subject: a held-out (color, shape) pair or another object,
  and for yes/no questions by form (presence, position, relation) and true answer.
* `eval_videos(n, seed, split)` / `score_videos(items, continuations)`: held-out 8-frame clips
  at 64x64, every second frame kept (4 frames, the training layout of the bundled model); the first
  `VIDEO_CONTEXT` are the context, the rest are scored with `motion.compare_motion` against the true
  centres (mean over clips of found, direction accuracy and position error).
  `video_baselines(items, reconstruct)` scores two references on the same clips, both through the
  vision tokenizer frame by frame: "still" (the last context frame repeated: what standing still
  scores) and "tokenizer" (the true continued frames: the most a model drawing through it can score).
  Position error counts only the objects found, so compare it together with `found`.
* `score_reconstructions(prompts, pictures)`: the vision tokenizer on the prompts' ground-truth
  pictures: mean PSNR, and the text-to-image score of the reconstructions (the round trip, overall
  and per claim category), which bounds what any language model drawing through that tokenizer can
  reach; `format_report` shows it beside the text-to-image rows, and the video baselines beside the
  video rows.
* `evaluate_shapes(generate, answer, continue_video, reconstruct, ...)`: all four, for a model given
  as plain functions (`generate(prompt, seed) -> PIL image`, `answer(image, question) -> str`,
  `continue_video(caption, context_frames, seed) -> frames`, `reconstruct(image) -> image`); any
  may be None.
  Returns a `ShapesReport`; `report.to_dict()` is the table as JSON-ready data and
  `format_report(report)` the same table as text.

Same arguments, same prompts, questions and seeds. This module does not load or run models and
parses no command line.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from emu3.datasets.shapes.captions import caption_text
from emu3.datasets.shapes.claims import CATEGORIES, Claim
from emu3.datasets.shapes.description import Description
from emu3.datasets.shapes.questions import QUESTION_KINDS, YES_NO_FORMS, questions_for
from emu3.datasets.shapes.render import DEFAULT_IMAGE_SIZE, render
from emu3.datasets.shapes.sampling import sample_captioned_scene
from emu3.datasets.shapes.scene import Scene
from emu3.datasets.shapes.split import HELD_OUT_PAIRS, check_split
from emu3.datasets.shapes.video import render_video, sample_video
from emu3.eval.shapes.analyze import analyze
from emu3.eval.shapes.motion import compare_motion
from emu3.eval.shapes.stats import mean, ratio_standard_error, standard_error
from emu3.eval.shapes.vqa import answer_matches

DEFAULT_PROMPTS = 200
DEFAULT_QUESTIONS = 200
DEFAULT_VIDEOS = 20
VIDEO_FRAMES, VIDEO_STRIDE, VIDEO_CONTEXT, VIDEO_SIZE = 8, 2, 2, 64  # 8 frames rendered, 4 kept, 2 given
VIDEO_KEPT = VIDEO_FRAMES // VIDEO_STRIDE
SUBJECTS = ("held-out pair", "other object")  # what a color or shape question is about


@dataclass(frozen=True)
class Prompt:
    text: str
    description: Description
    scene: Scene  # one ground-truth scene satisfying the prompt

    @property
    def claims(self) -> tuple[Claim, ...]:
        return self.description.claims()


@dataclass(frozen=True)
class QuestionItem:
    image: Image.Image
    question: str
    answer: str
    kind: str
    subject: tuple[str, str] | None = None  # the (color, shape) a color or shape question is about
    form: str | None = None  # of a yes/no question: presence, position or relation (`YES_NO_FORMS`)


@dataclass(frozen=True)
class ImageScores:
    n_prompts: int
    overall: float  # fraction of prompts whose claims all hold
    claims: float  # fraction of all claims that hold
    overall_se: float | None  # standard errors of those two (`stats`; None with one prompt)
    claims_se: float | None
    categories: dict[str, float]  # claim category -> fraction of its claims that hold
    category_counts: dict[str, int]  # claim category -> number of claims
    failures: tuple[dict[str, Any], ...]  # {"prompt", "failed": [claim dicts]} per failed prompt


@dataclass(frozen=True)
class AnswerScores:
    n_questions: int
    accuracy: float
    accuracy_se: float | None  # its standard error (`stats`; None with one question)
    kinds: dict[str, float]  # question kind -> accuracy
    kind_counts: dict[str, int]
    # color and shape questions about a held-out (color, shape) pair, and about any other object: the
    # first names one attribute the LM never saw with the answer ("what shape is the yellow object?")
    subjects: dict[str, float]  # "held-out pair" / "other object" -> accuracy (keys with no question left out)
    subject_counts: dict[str, int]
    # yes/no questions by form and true answer ("position, yes"): a model answering "no" to every
    # question of a form scores 0 on its "yes" row (keys with no question left out)
    forms: dict[str, float] = field(default_factory=dict)
    form_counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class VideoItem:
    caption: str
    frames: tuple[Image.Image, ...]  # the kept frames; the first VIDEO_CONTEXT are the context
    tracks: dict[tuple[str, str], Any]  # (color, shape) -> true centres (len(frames), 2)

    @property
    def context(self) -> list[Image.Image]:
        return list(self.frames[:VIDEO_CONTEXT])

    @property
    def target_tracks(self) -> dict[tuple[str, str], Any]:
        return {key: track[VIDEO_CONTEXT:] for key, track in self.tracks.items()}


@dataclass(frozen=True)
class VideoScores:
    n_videos: int
    n_continued: int  # frames continued per clip
    found: float | None  # means over clips of the MotionScore fields; None where no clip defines one
    direction_accuracy: float | None
    position_error: float | None  # in fractions of the picture side
    found_se: float | None  # standard errors of those three over clips (`stats`)
    direction_se: float | None
    position_error_se: float | None


@dataclass(frozen=True)
class TokenizerScores:
    n_pictures: int
    psnr: float  # mean over pictures, dB
    round_trip: float  # text-to-image `overall` of the reconstructed ground-truth pictures
    round_trip_claims: float  # fraction of their claims that hold
    round_trip_categories: dict[str, float]  # per claim category: the ceiling the tokenizer puts on text to image


@dataclass(frozen=True)
class ShapesReport:
    split: str
    seed: int
    image_size: int
    images: ImageScores | None
    answers: AnswerScores | None
    videos: VideoScores | None = None
    tokenizer: TokenizerScores | None = None
    video_baselines: dict[str, VideoScores] = field(default_factory=dict)  # `video_baselines`: "still", "tokenizer"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _by_group(results: dict[str, list[bool]], groups: Sequence[str]) -> tuple[dict[str, float], dict[str, int]]:
    """The fraction of true results and their number per group, in the order of `groups`, leaving out
    groups without results."""
    kept = [g for g in groups if results.get(g)]
    return {g: sum(results[g]) / len(results[g]) for g in kept}, {g: len(results[g]) for g in kept}


def _rng(purpose: str, seed: int, split: str) -> random.Random:
    return random.Random(f"shapes-eval/{purpose}/{seed}/{split}")


def eval_prompts(n: int = DEFAULT_PROMPTS, seed: int = 0, split: str = "heldout") -> list[Prompt]:
    """`n` prompts of the split, in canonical wording; the same for the same arguments."""
    check_split(split)
    rng = _rng("prompts", seed, split)
    prompts = []
    for _ in range(n):
        sample = sample_captioned_scene(rng, split)
        prompts.append(Prompt(caption_text(sample.description), sample.description, sample.scene))
    return prompts


def score_images(prompts: Sequence[Prompt], images: Sequence) -> ImageScores:
    """Check every prompt's claims on its picture (PIL image or (H, W, 3) array)."""
    if len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
    if not prompts:
        raise ValueError("no prompts to score")
    held: dict[str, list[bool]] = defaultdict(list)
    holding, claimed, failures = [], [], []  # per prompt: claims that hold, claims
    for prompt, image in zip(prompts, images):
        analysis = analyze(image)
        failed = []
        for claim in prompt.claims:
            ok = claim.holds(analysis)
            held[claim.category].append(ok)
            if not ok:
                failed.append(claim.to_dict())
        holding.append(len(prompt.claims) - len(failed))
        claimed.append(len(prompt.claims))
        if failed:
            failures.append({"prompt": prompt.text, "failed": failed})
    all_right = [float(h == c) for h, c in zip(holding, claimed)]
    categories, category_counts = _by_group(held, CATEGORIES)
    return ImageScores(
        n_prompts=len(prompts), overall=mean(all_right), claims=sum(holding) / sum(claimed),
        overall_se=standard_error(all_right), claims_se=ratio_standard_error(holding, claimed),
        categories=categories, category_counts=category_counts, failures=tuple(failures))


def eval_questions(n: int = DEFAULT_QUESTIONS, seed: int = 0, split: str = "heldout",
                   image_size: int = DEFAULT_IMAGE_SIZE) -> list[QuestionItem]:
    """`n` rendered scenes of the split with one question each; the same for the same arguments."""
    check_split(split)
    rng = _rng("questions", seed, split)
    items = []
    for _ in range(n):
        scene = sample_captioned_scene(rng, split).scene
        qa, = questions_for(scene, rng, 1, split)  # the train split's questions name no held-out pair
        items.append(QuestionItem(render(scene, image_size), qa.question, qa.answer, qa.kind, qa.subject, qa.form))
    return items


def score_answers(items: Sequence[QuestionItem], answers: Sequence[str]) -> AnswerScores:
    """Accuracy of `answers` (one per item), overall, per question kind, and for color and shape
    questions by whether their subject is a held-out pair."""
    if len(items) != len(answers):
        raise ValueError(f"{len(items)} questions but {len(answers)} answers")
    if not items:
        raise ValueError("no questions to score")
    right: dict[str, list[bool]] = defaultdict(list)
    by_subject: dict[str, list[bool]] = defaultdict(list)
    by_form: dict[str, list[bool]] = defaultdict(list)
    for item, answer in zip(items, answers):
        ok = answer_matches(answer, item.answer)
        right[item.kind].append(ok)
        if item.subject is not None:
            by_subject[SUBJECTS[item.subject not in HELD_OUT_PAIRS]].append(ok)
        if item.form is not None:
            by_form[f"{item.form}, {item.answer}"].append(ok)
    flat = [float(ok) for results in right.values() for ok in results]
    kinds, kind_counts = _by_group(right, QUESTION_KINDS)
    subjects, subject_counts = _by_group(by_subject, SUBJECTS)
    forms, form_counts = _by_group(by_form, [f"{form}, {truth}" for form in YES_NO_FORMS for truth in ("yes", "no")])
    return AnswerScores(n_questions=len(items), accuracy=mean(flat), accuracy_se=standard_error(flat),
                        kinds=kinds, kind_counts=kind_counts, subjects=subjects, subject_counts=subject_counts,
                        forms=forms, form_counts=form_counts)


def eval_videos(n: int = DEFAULT_VIDEOS, seed: int = 0, split: str = "heldout") -> list[VideoItem]:
    """`n` captioned clips of the split, 4 kept frames each; the same for the same arguments."""
    check_split(split)
    rng = _rng("videos", seed, split)
    items = []
    for _ in range(n):
        video = sample_video(rng, VIDEO_FRAMES, split=split)
        keep = slice(None, None, VIDEO_STRIDE)
        items.append(VideoItem(video.caption(), tuple(render_video(video, VIDEO_SIZE)[keep]),
                               {key: track[keep] for key, track in video.tracks().items()}))
    return items


def score_videos(items: Sequence[VideoItem], continuations: Sequence[Sequence]) -> VideoScores:
    """Motion scores of each clip's continued frames (one sequence of frames per item)."""
    if len(items) != len(continuations):
        raise ValueError(f"{len(items)} videos but {len(continuations)} continuations")
    if not items:
        raise ValueError("no videos to score")
    scores = [compare_motion(list(frames), item.target_tracks) for item, frames in zip(items, continuations)]
    found, direction, error = ([getattr(s, name) for s in scores]
                               for name in ("found", "direction_accuracy", "position_error"))
    return VideoScores(n_videos=len(items), n_continued=len(items[0].frames) - VIDEO_CONTEXT,
                       found=mean(found), direction_accuracy=mean(direction), position_error=mean(error),
                       found_se=standard_error(found), direction_se=standard_error(direction),
                       position_error_se=standard_error(error))


def video_baselines(items: Sequence[VideoItem], reconstruct: Callable[[Image.Image], Image.Image] | None = None
                    ) -> dict[str, VideoScores]:
    """Motion scores of references for the clips: "still", each clip's last context frame repeated, and
    "tokenizer", the true continued frames. With `reconstruct` (a picture through the vision tokenizer),
    both pass through it frame by frame, as a model's frames do; without it there is no "tokenizer"."""
    through = reconstruct or (lambda frame: frame)
    continued = [i.frames[VIDEO_CONTEXT:] for i in items]
    baselines = {"still": score_videos(items, [[through(i.context[-1])] * len(c) for i, c in zip(items, continued)])}
    if reconstruct is not None:
        baselines["tokenizer"] = score_videos(items, [[reconstruct(f) for f in c] for c in continued])
    return baselines


def psnr(reference: Image.Image, picture: Image.Image) -> float:
    """Peak signal-to-noise ratio of `picture` against `reference` (same size), in dB, on 0..255 pixels."""
    a = np.asarray(reference.convert("RGB"), np.float64)
    b = np.asarray(picture.convert("RGB").resize(reference.size), np.float64)
    mse = float(((a - b) ** 2).mean()) / 255**2
    return 10 * math.log10(1 / max(mse, 1e-10))


def score_reconstructions(prompts: Sequence[Prompt], pictures: Sequence[Image.Image],
                          image_size: int = DEFAULT_IMAGE_SIZE) -> TokenizerScores:
    """PSNR and round-trip score of `pictures`, the tokenizer's reconstructions of the prompts' scenes."""
    truth = [render(p.scene, image_size) for p in prompts]
    if len(truth) != len(pictures):
        raise ValueError(f"{len(truth)} prompts but {len(pictures)} reconstructions")
    scores = score_images(prompts, pictures)
    return TokenizerScores(len(truth), sum(map(psnr, truth, pictures)) / len(truth), scores.overall, scores.claims,
                           scores.categories)


def evaluate_shapes(generate: Callable[[str, int], Any] | None = None,
                    answer: Callable[[Image.Image, str], str] | None = None,
                    continue_video: Callable[[str, list[Image.Image], int], Sequence] | None = None,
                    reconstruct: Callable[[Image.Image], Image.Image] | None = None, *,
                    n_prompts: int = DEFAULT_PROMPTS, n_questions: int = DEFAULT_QUESTIONS,
                    n_videos: int = DEFAULT_VIDEOS, seed: int = 0,
                    split: str = "heldout", image_size: int = DEFAULT_IMAGE_SIZE) -> ShapesReport:
    """Run ShapesEval on a model given as functions. `generate(prompt, seed)` returns a picture
    for prompt i with seed `seed + i`; `answer(image, question)` returns a short answer;
    `continue_video(caption, context_frames, seed)` returns the continued frames of clip i
    (seed `seed + i`); `reconstruct(image)` passes a picture through the vision tokenizer (scored on
    the ground-truth pictures of the text-to-image prompts, and on the clips' continued frames when
    `continue_video` is given; with `n_prompts` 0 only there)."""
    tokenizer_only = generate is None and answer is None and continue_video is None
    if tokenizer_only and reconstruct is None:
        raise ValueError("nothing to evaluate: pass generate (text to image), answer (questions), "
                         "continue_video (video), reconstruct (tokenizer) or several")
    if tokenizer_only and n_prompts < 1:
        raise ValueError("the tokenizer is scored on the prompts' pictures: n_prompts must be >= 1")
    images = answers = videos = tokenizer = None
    baselines: dict[str, VideoScores] = {}
    prompts = eval_prompts(n_prompts, seed, split) if generate is not None or reconstruct is not None else []
    if generate is not None:
        images = score_images(prompts, [generate(p.text, seed + i) for i, p in enumerate(prompts)])
    if answer is not None:
        items = eval_questions(n_questions, seed, split, image_size)
        answers = score_answers(items, [answer(item.image, item.question) for item in items])
    if continue_video is not None:
        clips = eval_videos(n_videos, seed, split)
        videos = score_videos(clips, [continue_video(c.caption, c.context, seed + i) for i, c in enumerate(clips)])
        baselines = video_baselines(clips, reconstruct)
    if reconstruct is not None and prompts:
        tokenizer = score_reconstructions(prompts, [reconstruct(render(p.scene, image_size)) for p in prompts],
                                          image_size)
    return ShapesReport(split, seed, image_size, images, answers, videos, tokenizer, baselines)


def _number(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else format(x, f".{digits}f")


def format_report(report: ShapesReport) -> str:
    """The report as a plain-text table; `± s.e.` is a score's standard error (see `stats`)."""
    lines = [f"ShapesEval: split {report.split}, seed {report.seed}"]

    def cell(x: float | None, se: float | None = None, digits: int = 3) -> str:
        """A score and, when known, its standard error."""
        score = f"{_number(x, digits):>8}"
        return score + (f"{'±' + format(se, f'.{digits}f'):>8}" if se is not None else " " * 8)

    def header(part: str, score: str) -> str:
        return f"{part:<16}{score:>8}{'± s.e.':>8}{'n':>7}"

    if report.images is not None:
        s, t = report.images, report.tokenizer
        # With the tokenizer measured, each row also shows its round trip: the most the model's pictures can score.
        ceiling = ({"overall": t.round_trip, "all claims": t.round_trip_claims, **t.round_trip_categories}
                   if t is not None else {})

        def row(name: str, score: float, n: int, key: str, se: float | None = None) -> str:
            return f"{name:<16}{cell(score, se)}{n:>7}" + (f"{_number(ceiling[key]):>11}" if key in ceiling else "")

        lines += ["", header("text to image", "score") + (f"{'tokenizer':>11}" if ceiling else ""),
                  row("overall", s.overall, s.n_prompts, "overall", s.overall_se),
                  row("all claims", s.claims, sum(s.category_counts.values()), "all claims", s.claims_se)]
        lines += [row(f"  {c}", v, s.category_counts[c], c) for c, v in s.categories.items()]
    if report.answers is not None:
        a = report.answers
        lines += ["", header("questions", "accuracy") + f"   ({report.image_size}x{report.image_size} pictures)",
                  f"{'overall':<16}{cell(a.accuracy, a.accuracy_se)}{a.n_questions:>7}"]
        lines += [f"  {k:<14}{cell(v)}{a.kind_counts[k]:>7}" for k, v in a.kinds.items()]
        if a.subjects:
            lines += ["  color and shape questions about a"]
            lines += [f"  {k:<14}{cell(v)}{a.subject_counts[k]:>7}" for k, v in a.subjects.items()]
        if a.forms:
            lines += ["  yes/no questions by form, when the truth is"]
            lines += [f"  {k:<14}{cell(v)}{a.form_counts[k]:>7}" for k, v in a.forms.items()]
    if report.videos is not None:
        v, baselines = report.videos, report.video_baselines
        # Beside each row, what the references score (`video_baselines`): standing still, the tokenizer's ceiling.
        lines += ["", header("video", "score") + "".join(f"{name:>11}" for name in baselines)
                  + f"   ({VIDEO_CONTEXT} frames given, {v.n_continued} continued)"]
        for name, key, se in (("found", "found", v.found_se), ("direction", "direction_accuracy", v.direction_se),
                              ("position error", "position_error", v.position_error_se)):
            lines.append(f"{name:<16}{cell(getattr(v, key), se)}{v.n_videos:>7}"
                         + "".join(f"{_number(getattr(b, key)):>11}" for b in baselines.values()))
    if report.tokenizer is not None:
        t = report.tokenizer
        lines += ["", header("vision tokenizer", "score") + "   (ground-truth pictures of the prompts)",
                  f"{'PSNR (dB)':<16}{cell(t.psnr, digits=2)}{t.n_pictures:>7}",
                  f"{'round trip':<16}{cell(t.round_trip)}{t.n_pictures:>7}",
                  f"{'  its claims':<16}{cell(t.round_trip_claims)}{t.n_pictures:>7}"]
    return "\n".join(lines)

"""`emu3 eval shapes`: the ShapesEval table of an Emu3 model (held-out prompts and questions, fixed seed).

Text-to-image prompts are generated with the model's default prompts (`default_prompts`) and guidance,
pictures are scored against the prompt's claims, questions about ground-truth pictures are
answered greedily, and held-out clips are continued (`generate_video`: 2 frames given with the
caption, 2 generated) and scored by their motion, beside a still clip and the tokenizer's round trip
of the true frames; the vision tokenizer's PSNR and round-trip score are measured on the prompts'
ground-truth pictures. This module parses arguments and runs the model;
the scoring lives in `emu3.eval.shapes`.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING

from emu3.defaults import GUIDANCE_SCALE, PLAUSIBILITY_HELP, TOP_K
from emu3.eval.shapes import ShapesReport, evaluate_shapes, format_report
from emu3.eval.shapes.benchmark import VIDEO_CONTEXT, VIDEO_KEPT

if TYPE_CHECKING:
    from emu3.generation import SamplingConfig


def evaluate_model(m, *, n_prompts: int, n_questions: int, n_videos: int = 0, seed: int = 0,
                   cfg: float = GUIDANCE_SCALE, split: str = "heldout",
                   sampling: SamplingConfig | None = None) -> ShapesReport:
    """ShapesEval of a loaded `Emu3` (`emu3.pipelines.Emu3`); 0 prompts, questions or videos skips that part.

    `sampling` draws the pictures and the clips' frames (default: the model's `default_sampling`).
    """
    from emu3.pipelines.reconstruct import reconstruct
    from emu3.pipelines.text_to_image import default_sampling, text_to_image
    from emu3.pipelines.understanding import answer
    from emu3.pipelines.video import generate_video

    sampling = sampling or default_sampling(m)

    def generate(prompt: str, s: int):  # the model's own prompts around the prompt (`default_prompts`)
        return text_to_image(m, prompt, seed=s, cfg=cfg, sampling=sampling).images[0]

    def reply(image, question: str) -> str:
        return answer(m, [image], question, max_new_tokens=16).text

    def continue_video(caption: str, context, s: int):
        frames = generate_video(m, caption, context_frames=context, num_frames=VIDEO_KEPT - VIDEO_CONTEXT, cfg=cfg,
                                sampling=sampling, seed=s).frames
        return frames[len(context):]

    def round_trip(image):
        return reconstruct(m.vq, m.processor, [image]).frames[0]

    return evaluate_shapes(generate=generate if n_prompts else None, answer=reply if n_questions else None,
                           continue_video=continue_video if n_videos else None,
                           reconstruct=round_trip if n_prompts or n_videos else None, n_prompts=n_prompts,
                           n_questions=n_questions, n_videos=n_videos, seed=seed, split=split)


def add_parser(sub) -> None:
    from emu3.cli import GUIDANCE, SEED, TEMPERATURE, fraction

    p = sub.add_parser("eval", help="benchmarks of a model")
    which = p.add_subparsers(dest="benchmark", required=True)
    shapes = which.add_parser("shapes", help="ShapesEval: text to image and questions on held-out compositions")
    shapes.add_argument("--model", help="language-model folder (original or -hf; default: the bundled model)")
    shapes.add_argument("--vision-tokenizer", help="vision-tokenizer folder (default: found beside --model)")
    shapes.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda if available)")
    shapes.add_argument("--prompts", type=int, default=100, help="text-to-image prompts (0: skip)")
    shapes.add_argument("--questions", type=int, default=200, help="questions (0: skip)")
    shapes.add_argument("--videos", type=int, default=20, help="clips to continue (0: skip)")
    shapes.add_argument("--seed", type=SEED, default=0)
    shapes.add_argument("--cfg", type=GUIDANCE, default=GUIDANCE_SCALE, help="classifier-free guidance scale")
    shapes.add_argument("--temperature", type=TEMPERATURE, default=1.0, help="sampling temperature of pictures and clips")
    shapes.add_argument("--top-k", type=int, default=TOP_K,
                        help=f"sampling top-k of pictures and clips (default {TOP_K})")
    shapes.add_argument("--plausibility", type=fraction("plausibility"), default=None, help=PLAUSIBILITY_HELP)
    shapes.add_argument("--split", default="heldout", help="heldout (default) or train compositions")
    shapes.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    shapes.set_defaults(run=cmd_eval_shapes)


def cmd_eval_shapes(args: argparse.Namespace) -> dict:
    from emu3.bundled import model_or_bundled
    from emu3.cli import resolve_device
    from emu3.generation import SamplingConfig
    from emu3.pipelines import Emu3
    from emu3.pipelines.text_to_image import default_sampling

    if min(args.prompts, args.questions, args.videos) < 0 or not (args.prompts or args.questions or args.videos):
        raise ValueError("--prompts, --questions and --videos must be >= 0, and not all 0")
    # built before loading, so that bad values are refused first; an unset --plausibility is the model's
    sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, plausibility=args.plausibility or 0.0)
    m = Emu3.load(model_or_bundled(args.model), args.vision_tokenizer, device=resolve_device(args.device))
    if args.plausibility is None:
        sampling = dataclasses.replace(sampling, plausibility=default_sampling(m).plausibility)
    report = evaluate_model(m, n_prompts=args.prompts, n_questions=args.questions, n_videos=args.videos,
                            seed=args.seed, cfg=args.cfg, split=args.split, sampling=sampling)
    if not args.json:
        print(format_report(report))
    return report.to_dict()

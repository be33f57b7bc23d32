"""Emu3.5's subcommands of `emu3`, and its side of `emu3 generate` / `emu3 chat`.

* `emu3 edit --image REF [--image REF2 ...] INSTRUCTION -o out.png` (x2i: reference images +
  instruction -> one image, the size of the last reference);
* `emu3 story PROMPT -o DIR`, `emu3 howto PROMPT [--image ...] [--steps N] -o DIR`, and likewise
  `explore` and `vla`: an interleaved response written to DIR as images, `result.json` and
  `index.html` (open it in a browser);
* `generate_from_args` / `chat_from_args`: what `emu3 generate` (t2i) and `emu3 chat` run when
  their `--model` is an Emu3.5 checkpoint.

Every sampling option defaults to the task's official setting (`emu3.emu35.tasks`). This module
parses and prints; the work is `pipeline.py`'s.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from emu3.cli import GUIDANCE, SEED, TEMPERATURE, whole_number
from emu3.generation import SamplingConfig

INTERLEAVED_TASKS = {
    "story": "a story told in interleaved text and images (visual narrative)",
    "howto": "step-by-step instructions with an image per step (visual guidance)",
    "explore": "a walk through a described or pictured world (world exploration)",
    "vla": "subtask plans with predicted keyframes (embodied manipulation)",
}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register `edit`, `story`, `howto`, `explore` and `vla` on the `emu3` subparsers."""
    from emu3.cli import _add_common

    edit = sub.add_parser("edit", help="Emu3.5: edit or combine reference images following an instruction (x2i)")
    edit.add_argument("instruction")
    _add_common(edit, bundled=False)
    edit.add_argument("--image", action="append", required=True, help="a reference image (repeat for up to 3)")
    edit.add_argument("-o", "--output", required=True, help="output image")
    _add_options(edit)
    edit.set_defaults(run=cmd_edit)

    for task, description in INTERLEAVED_TASKS.items():
        p = sub.add_parser(task, help=f"Emu3.5: {description}")
        p.add_argument("prompt")
        _add_common(p, bundled=False)
        p.add_argument("--image", action="append", default=[], help="a reference image (repeat for several)")
        p.add_argument("-o", "--output", required=True, help="output folder (images, result.json, index.html)")
        if task == "howto":
            p.add_argument("--steps", type=whole_number("--steps", 1), default=None, help="ask for this many steps")
        _add_options(p)
        p.set_defaults(run=cmd_interleaved, task=task)


def _add_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation (default: the task's official settings)")
    g.add_argument("--cfg", type=GUIDANCE, default=None, help="guidance scale on image tokens")
    g.add_argument("--image-area", type=whole_number("--image-area", 1), default=None,
                   help="pixel area the reference images are resized to; generated images take the last "
                   "reference's size, or the model's own choice without one")
    g.add_argument("--max-new-tokens", type=whole_number("--max-new-tokens", 1), default=None,
                   help="token budget of the response")
    g.add_argument("--seed", type=SEED, default=None,
                   help="seed for reproducible sampling")
    g.add_argument("--greedy", action="store_true", help="take the most likely token everywhere")
    for mode in ("text", "image"):
        g.add_argument(f"--{mode}-top-k", type=int, default=None)
        g.add_argument(f"--{mode}-top-p", type=float, default=None)
        g.add_argument(f"--{mode}-temperature", type=TEMPERATURE, default=None)


def _sampling(args: argparse.Namespace, prefix: str, base: SamplingConfig) -> SamplingConfig:
    """`base` with the options `--{prefix}top-k/top-p/temperature` (and `--plausibility`, which `emu3 generate`
    has) that were given (all greedy with --greedy)."""
    names = ("top_k", "top_p", "temperature", "plausibility")
    changes = {name: getattr(args, prefix + name, None) for name in names}
    if args.greedy:  # the plausibility floor still matters: a guided argmax can be a tail code
        return SamplingConfig(greedy=True, plausibility=changes["plausibility"] or 0.0)
    return dataclasses.replace(base, **{k: v for k, v in changes.items() if v is not None})


def _load(args: argparse.Namespace):
    from emu3.cli import resolve_device, resolve_dtype
    from emu3.emu35.bundle import Emu35

    device = resolve_device(args.device)
    return Emu35.load(args.model, args.vision_tokenizer, device=device, dtype=resolve_dtype(args.dtype, device),
                      quantize=args.quantize)


def _run(args: argparse.Namespace, task: str, prompt: str, images: list, text: SamplingConfig | None,
         image: SamplingConfig | None, **kwargs):
    """`run_task` with the options every Emu3.5 command shares, under a progress bar."""
    from emu3.cli import ProgressBar
    from emu3.emu35.pipeline import check_request, run_task
    from emu3.emu35.tasks import task_settings

    check_request(task_settings(task), images, kwargs.get("ratio"), kwargs.get("steps"), kwargs.get("num_samples", 1))
    m = _load(args)
    bar = ProgressBar(task, not args.quiet)
    results = run_task(m, task, prompt, images, image_area=args.image_area, cfg_scale=args.cfg,
                       max_new_tokens=args.max_new_tokens, text_sampling=text, image_sampling=image, seed=args.seed,
                       progress=bar, **kwargs)
    bar.close()
    return results


def _task_run(args: argparse.Namespace, task: str, prompt: str, images: list, **kwargs):
    from emu3.emu35.tasks import task_settings

    given = [f"--{mode}-{name}" for mode in ("text", "image") for name in ("top-k", "top-p", "temperature")
             if getattr(args, f"{mode}_{name.replace('-', '_')}") is not None]
    if args.greedy and given:
        raise ValueError(f"sampling options ({', '.join(given)}) do nothing with --greedy; drop them or --greedy")
    settings = task_settings(task)
    return _run(args, task, prompt, images, _sampling(args, "text_", settings.text),
                _sampling(args, "image_", settings.image), **kwargs)


def _save_single_images(results, output: str) -> list[Path]:
    """Save each sample's image; samples without one are named in an error, after the others are saved."""
    from emu3.cli import _output_paths

    paths = _output_paths(output, len(results))
    for result, path in zip(results, paths):
        if result.images:
            path.parent.mkdir(parents=True, exist_ok=True)
            result.images[0].save(path)
    ended = [r.seed for r in results if not r.images and r.stopped == "eos"]
    cut = [r.seed for r in results if not r.images and r.stopped != "eos"]
    if ended or cut:
        reasons = ([f"the model ended its response without drawing one (seeds {ended})"] if ended else []) + \
                  ([f"the image did not fit in the token budget (seeds {cut}): raise --max-new-tokens"] if cut else [])
        saved = [str(p) for r, p in zip(results, paths) if r.images]
        raise ValueError(f"no complete image was generated: {'; '.join(reasons)}"
                         + (f"; the others were saved: {', '.join(saved)}" if saved else ""))
    return paths


def _image_payload(results, paths: list[Path]) -> dict:
    return {"images": [str(p) for p in paths], "token_ids": [r.token_ids for r in results],
            "grid": list(results[0].grids[0].shape), "seeds": [r.seed for r in results],
            "seconds": round(results[0].seconds, 3), "text": [r.text for r in results]}


def cmd_edit(args: argparse.Namespace) -> dict:
    from emu3.cli import check_image_output
    from emu3.vision import load_image

    check_image_output(args.output)
    images = [load_image(p) for p in args.image]
    results = _task_run(args, "x2i", args.instruction, images)
    paths = _save_single_images(results, args.output)
    if not args.json:
        print(paths[0])
    return _image_payload(results, paths)


def cmd_interleaved(args: argparse.Namespace) -> dict:
    from emu3.emu35.result import VIEWER_FILE, check_output_folder
    from emu3.vision import load_image

    images = [load_image(p) for p in args.image]
    check_output_folder(args.output)
    kwargs = {"steps": args.steps} if args.task == "howto" else {}
    (result,) = _task_run(args, args.task, args.prompt, images, **kwargs)
    path = result.save(args.output)
    viewer = path.parent / VIEWER_FILE
    if not args.json:
        print(f"{viewer} ({len(result.images)} images, stopped at {result.stopped})")
    return {"result": str(path), "viewer": str(viewer), "images": len(result.images), "text": result.text,
            "stopped": result.stopped, "seed": result.seed, "seconds": round(result.seconds, 3)}


def generate_from_args(args: argparse.Namespace) -> dict:
    """`emu3 generate` for an Emu3.5 checkpoint: the t2i task (aspect-ratio presets or "auto")."""
    from emu3.emu35.tasks import task_settings

    if args.positive_prompt is not None or args.negative_prompt is not None:
        raise ValueError("--positive-prompt / --negative-prompt apply to Emu3 only (Emu3.5 guides against "
                         "its own unconditional prompt)")
    if args.speculative:
        raise ValueError("--speculative applies to Emu3 only")
    settings = task_settings("t2i")  # the generic sampling options steer the image tokens
    text = SamplingConfig(greedy=True) if args.greedy else settings.text
    results = _run(args, "t2i", args.prompt, [], text, _sampling(args, "", settings.image), ratio=args.ratio,
                   num_samples=args.batch)
    paths = _save_single_images(results, args.output)
    if not args.json:
        print("\n".join(str(p) for p in paths))
    return _image_payload(results, paths)


def chat_from_args(args: argparse.Namespace) -> dict:
    """`emu3 chat` for an Emu3.5 checkpoint: a text answer about the images."""
    from emu3.cli import ProgressBar
    from emu3.emu35.pipeline import chat
    from emu3.emu35.tasks import INTERLEAVED_AREA
    from emu3.vision import load_image

    images = [load_image(p) for p in args.image]
    sampling = SamplingConfig(greedy=args.greedy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    m = _load(args)
    bar = ProgressBar("answer", not args.quiet)
    result = chat(m, args.question, images, image_area=args.image_area or INTERLEAVED_AREA,
                  max_new_tokens=args.max_new_tokens, sampling=sampling, seed=args.seed, progress=bar)
    bar.close()
    if not args.json:
        print(result.text)
    return {"text": result.text, "token_ids": result.token_ids}


__all__ = ["add_parsers", "generate_from_args", "chat_from_args"]

"""`emu3 video`: text to a short clip, or the continuation of given first frames, written as a GIF.

    emu3 video "a red circle moving right" -o clip.gif --frames 4
    emu3 video "a red circle moving right" --context f0.png --context f1.png --frames 2 -o clip.gif

`--frames` counts the new frames; the output holds the context frames first. `-o` ending in .gif or
.webp gives an animated image, anything else a folder of PNG frames (`frames_output.save_frames`).
Without `--model` the bundled Shapes model is used. This module parses arguments and writes files;
the generation lives in `emu3.pipelines.video`.
"""

from __future__ import annotations

import argparse

from emu3.cli import GUIDANCE, ProgressBar, _add_common, _add_sampling, _is_emu35, _load, _sampling
from emu3.defaults import GUIDANCE_SCALE, TOP_K


def add_parser(sub) -> None:
    p = sub.add_parser("video", help="text to video, or the continuation of first frames")
    p.add_argument("prompt", help="the caption of the clip")
    _add_common(p)
    p.add_argument("-o", "--output", required=True, help="output GIF/WebP, or a folder for PNG frames")
    p.add_argument("--frames", type=int, default=4, help="number of frames to generate (default 4)")
    p.add_argument("--context", action="append", default=[], metavar="IMAGE",
                   help="a first frame to continue from (repeat, in order)")
    p.add_argument("--ratio", default=None, help="aspect ratio W:H (default: the context's, else 1:1)")
    p.add_argument("--cfg", type=GUIDANCE, default=GUIDANCE_SCALE,
                   help=f"classifier-free guidance scale (default {GUIDANCE_SCALE})")
    _add_sampling(p, top_k=TOP_K, greedy_default=False, guided=True)
    p.set_defaults(run=cmd_video)


def cmd_video(args: argparse.Namespace) -> dict:
    from emu3.bundled import model_or_bundled
    from emu3.pipelines.frames_output import check_frames_output, save_frames
    from emu3.pipelines.video import generate_video
    from emu3.vision import load_image

    if args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    context = [load_image(path) for path in args.context]
    check_frames_output(args.output, len(context) + args.frames)
    args.model = str(model_or_bundled(args.model))
    if _is_emu35(args.model):
        raise ValueError("emu3 video needs an Emu3 checkpoint; Emu3.5 has no video generation here")
    m = _load(args)
    bar = ProgressBar("video", not args.quiet)
    result = generate_video(m, args.prompt, context_frames=context, num_frames=args.frames, cfg=args.cfg,
                            sampling=_sampling(args, m), seed=args.seed, progress=bar, ratio=args.ratio)
    bar.close()
    out = save_frames(result.frames, args.output)
    if not args.json:
        print(out)
    return {"output": str(out), "frames": len(result.frames), "context_frames": result.num_context,
            "grid": list(result.grid), "token_ids": result.token_ids, "seeds": result.seeds,
            "seconds": round(result.seconds, 3)}

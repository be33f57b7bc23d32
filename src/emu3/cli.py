"""The `emu3` command: subcommands that parse arguments and call the pipelines.

`emu3 generate` (text to image), `emu3 chat` (questions about images), `emu3 reconstruct` (through
the vision tokenizer), `emu3 serve` (the HTTP API and web page; its arguments live in
emu3.serve.cli). Device and dtype are resolved here once. `--json` prints one JSON object on
stdout; progress goes to stderr. Expected failures (bad files, bad values, a run planned beyond the
free memory, a missing optional package) exit with status 2 and a one-line message instead of a
traceback. `generate` and `chat` tell Emu3 from Emu3.5 checkpoints by their files; Emu3.5's side and
its own commands (`edit`, `story`, `howto`, `explore`, `vla`) live in emu3.emu35.cli.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from emu3.bundled import model_or_bundled, vision_tokenizer_or_bundled
from emu3.defaults import GUIDANCE_SCALE, PLAUSIBILITY_HELP, TOP_K
from emu3.generation import SamplingConfig

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


class ProgressBar:
    """A small text progress bar on stderr, redrawn at most every 0.1 s."""

    def __init__(self, label: str, enabled: bool = True) -> None:
        self.label, self.enabled, self.last, self.start = label, enabled, 0.0, time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self.last < 0.1 and done < total):
            return
        self.last = now
        width = 30
        fill = int(width * done / total)
        rate = done / max(now - self.start, 1e-9)
        sys.stderr.write(f"\r{self.label} [{'#' * fill}{'.' * (width - fill)}] {done}/{total} {rate:.1f} tok/s")
        sys.stderr.flush()

    def close(self) -> None:
        """End the bar's line (call once, when the work is over)."""
        if self.enabled and self.last:
            sys.stderr.write("\n")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is available")
    if not _available(device):
        gpus = f", or cuda:0 to cuda:{torch.cuda.device_count() - 1}" if torch.cuda.is_available() else ""
        raise ValueError(f"--device {name} is not available on this machine (try cpu{gpus})")
    return device


def _available(device: torch.device) -> bool:
    """Whether this torch can run on `device` (its backend is built and present, and its index exists)."""
    if device.type == "cpu":
        return True
    if device.type == "mps":
        return torch.backends.mps.is_available()
    backend = getattr(torch, device.type, None)  # torch.cuda, torch.xpu, ...; none for meta
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        return False
    return device.index is None or device.index < backend.device_count()


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose one of auto, {', '.join(DTYPES)}") from None


def _add_common(p: argparse.ArgumentParser, *, lm: bool = True, bundled: bool = True) -> None:
    """The options of every model command. Without `bundled` (Emu3.5's commands: the bundled Shapes
    model is an Emu3 model) `--model` is required."""
    if lm and bundled:
        p.add_argument("--model", help="language-model folder (original or -hf) or hub id "
                       "(default: the bundled Shapes model)")
    elif lm:
        p.add_argument("--model", required=True, help="Emu3.5 checkpoint folder or hub id")
    found = "found beside --model" + ("; the bundled one without --model" if bundled else "")
    p.add_argument("--vision-tokenizer", help=f"vision-tokenizer folder (default: {found if lm else 'the bundled one'})")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--dtype", default="auto", help="model dtype: bf16, fp16, fp32 (default: bf16 on GPU, fp32 on CPU)"
                   if lm else "vision-tokenizer dtype: bf16, fp16, fp32 (default: fp32)")
    if lm:
        p.add_argument("--quantize", choices=["int8", "fp8"], help="weight-only quantization of the LM (torchao)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _checked(what: str, kind: str, convert, accept):
    """An argparse type: `convert(text)` when it converts and `accept`s the value; anything else is
    refused as "`what` is `kind`"."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"{what} is {kind}, got {text!r}")
        return value

    return parse


def whole_number(what: str, low: int, high: int | None = None):
    """An argparse type: a whole number from `low` to `high` (no bound when None); anything else is
    refused naming `what`."""
    span = f"of at least {low}" if high is None else f"from {low} to {high}"
    return _checked(what, f"a whole number {span}", int, lambda v: v >= low and (high is None or v <= high))


def fraction(what: str):
    """An argparse type: a number in [0, 1); anything else is refused naming `what`."""
    return _checked(what, "a number in [0, 1)", float, lambda v: 0.0 <= v < 1.0)


def finite_number(what: str, low: float, inclusive: bool):
    """An argparse type: a finite number above `low` (or equal to it when `inclusive`); NaN and
    infinities, which would silently turn every score into NaN, are refused naming `what`."""
    kind = f"a finite number {'>=' if inclusive else '>'} {low:g}"
    return _checked(what, kind, float, lambda v: math.isfinite(v) and (v >= low if inclusive else v > low))


SEED = whole_number("a seed", 0, 2**63 - 1)  # numpy and torch generators refuse negative seeds
GUIDANCE = finite_number("the guidance scale (--cfg)", 0, inclusive=False)
TEMPERATURE = finite_number("the temperature", 0, inclusive=True)


def _add_sampling(p: argparse.ArgumentParser, *, top_k: int | None, greedy_default: bool,
                  guided: bool = False) -> None:
    """The sampling flags; `guided` commands (pictures and clips) also take --plausibility."""
    g = p.add_argument_group("sampling")
    mode = "greedy, unless a sampling option below is given" if greedy_default else "sampling"
    g.add_argument("--greedy", action="store_const", const=True, default=None,
                   help=f"always take the most likely token (default: {mode})")
    g.add_argument("--sample", dest="greedy", action="store_const", const=False,
                   help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=TEMPERATURE, default=None, help="sampling temperature (default 1)")
    g.add_argument("--top-k", type=whole_number("--top-k", 1), default=None,
                   help="sample among the k most likely tokens" + (f" (default {top_k})" if top_k else ""))
    g.add_argument("--top-p", type=_checked("--top-p", "a number in (0, 1]", float, lambda v: 0 < v <= 1),
                   default=None, help="sample within the smallest set of tokens of this total probability")
    p.set_defaults(greedy_default=greedy_default, top_k_default=top_k)
    if guided:
        g.add_argument("--plausibility", type=fraction("plausibility"), default=None, help=PLAUSIBILITY_HELP)
    g.add_argument("--seed", type=SEED, default=None,
                   help="seed for reproducible sampling")


def settle_sampling_flags(args: argparse.Namespace) -> None:
    """Fill the sampling flags left unset. Without --greedy or --sample a command decodes its own way,
    except that a sampling option given (`chat --temperature 0.7`) means sampling; --greedy with one
    is refused, since it would be ignored."""
    given = [flag for flag, value in (("--temperature", args.temperature), ("--top-k", args.top_k),
                                      ("--top-p", args.top_p)) if value is not None]
    if args.greedy is None:
        args.greedy = args.greedy_default and not given
    elif args.greedy and given:
        raise ValueError(f"sampling options ({', '.join(given)}) do nothing with --greedy; drop them or --greedy")
    args.temperature = 1.0 if args.temperature is None else args.temperature
    args.top_k = args.top_k_default if args.top_k is None else args.top_k


def _sampling(args: argparse.Namespace, m=None) -> SamplingConfig:
    """The sampling flags of `args`; a --plausibility left unset is loaded model `m`'s default."""
    plausibility = getattr(args, "plausibility", None)
    if plausibility is None:
        from emu3.pipelines.text_to_image import default_sampling

        plausibility = 0.0 if m is None else default_sampling(m).plausibility
    return SamplingConfig(greedy=args.greedy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          plausibility=plausibility)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emu3", description="Emu3 multimodal models: generate, chat, reconstruct.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="text to image")
    gen.add_argument("prompt")
    _add_common(gen)
    gen.add_argument("-o", "--output", required=True, help="output image (with --batch N: name_0.png ...)")
    gen.add_argument("--ratio", default=None, help="aspect ratio W:H (default 1:1; Emu3.5: a preset or auto, default "
                     "4:3, the official t2i default)")
    gen.add_argument("--image-area", type=whole_number("--image-area", 1), default=None,
                     help="pixel area (default: the model's image_area)")
    gen.add_argument("--cfg", type=GUIDANCE, default=None,
                     help=f"classifier-free guidance scale (default: {GUIDANCE_SCALE} for Emu3, "
                     "the t2i setting for Emu3.5)")
    gen.add_argument("--positive-prompt", default=None, help="suffix appended to the prompt (default: the "
                     "official one; none for a compact-vocabulary model, trained without it)")
    gen.add_argument("--negative-prompt", default=None, help="unconditional context for guidance (default: the "
                     "official one; none for a compact-vocabulary model)")
    gen.add_argument("--batch", type=int, default=1, help="number of images")
    gen.add_argument("--speculative", type=int, default=0, metavar="N",
                     help="speculative Jacobi decoding with N draft tokens per forward (0: off)")
    gen.add_argument("--max-new-tokens", type=whole_number("--max-new-tokens", 1), default=None,
                     help="Emu3.5 only: token budget (default 5120)")
    _add_sampling(gen, top_k=None, greedy_default=False, guided=True)
    gen.set_defaults(run=cmd_generate)

    chat = sub.add_parser("chat", help="answer a question about images")
    chat.add_argument("question")
    _add_common(chat)
    chat.add_argument("--image", action="append", default=[], help="an image (repeat for several)")
    chat.add_argument("--max-new-tokens", type=whole_number("--max-new-tokens", 1), default=1024,
                      help="most tokens in the answer (default 1024, fewer where the model's context ends)")
    chat.add_argument("--image-area", type=whole_number("--image-area", 1), default=None,
                      help="Emu3.5 only: pixel area of the images")
    _add_sampling(chat, top_k=None, greedy_default=True)
    chat.set_defaults(run=cmd_chat)

    rec = sub.add_parser("reconstruct", help="encode and decode through the vision tokenizer")
    rec.add_argument("input", help="an image, a folder of frames, an animated GIF/WebP or a video")
    _add_common(rec, lm=False)
    rec.add_argument("-o", "--output", required=True, help="output image, GIF/WebP, or folder for frames")
    rec.set_defaults(run=cmd_reconstruct)

    from emu3.emu35.cli import add_parsers as add_emu35_parsers

    add_emu35_parsers(sub)

    from emu3.serve.cli import add_parser as add_serve_parser

    add_serve_parser(sub)

    from emu3.eval.cli import add_parser as add_eval_parser

    add_eval_parser(sub)

    from emu3.pipelines.video_cli import add_parser as add_video_parser

    add_video_parser(sub)

    from emu3.train.cli import add_parsers as add_train_parsers

    add_train_parsers(sub)
    return parser


def _load(args: argparse.Namespace, *, lm: bool = True):
    from emu3.pipelines.loading import Emu3

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if not lm:  # the vision tokenizer alone: fp32 unless asked, as beside an LM
        vq_dtype = torch.float32 if args.dtype == "auto" else dtype
        return Emu3.load(None, vision_tokenizer_or_bundled(args.vision_tokenizer), device=device, vq_dtype=vq_dtype)
    return Emu3.load(args.model, args.vision_tokenizer, device=device, dtype=dtype, quantize=args.quantize)


def _is_emu35(model: str) -> bool:
    from emu3.checkpoint import EMU35_FAMILY, detect_family

    return detect_family(model) == EMU35_FAMILY


def check_image_output(output: str) -> None:
    """Refuse, before any work, an `-o` that names no image file this can write."""
    from emu3.pipelines.frames_output import is_image_file

    if Path(output).is_dir():
        raise ValueError(f"-o {output} is a folder; give an image file name (e.g. {Path(output) / 'out.png'})")
    if not is_image_file(output):
        raise ValueError(f"-o {output}: {Path(output).suffix or 'no suffix'} names no image format; "
                         "end it in .png, .jpg or .webp")


def _output_paths(output: str, n: int) -> list[Path]:
    out = Path(output)
    if n == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i}{out.suffix or '.png'}") for i in range(n)]


def cmd_generate(args: argparse.Namespace) -> dict:
    from emu3.pipelines.text_to_image import text_to_image

    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    if args.speculative < 0:
        raise ValueError(f"--speculative must be >= 0, got {args.speculative}")
    check_image_output(args.output)
    args.model = str(model_or_bundled(args.model))
    if _is_emu35(args.model):
        from emu3.emu35.cli import generate_from_args

        return generate_from_args(args)
    if args.max_new_tokens is not None:
        raise ValueError("--max-new-tokens applies to Emu3.5 checkpoints only (an Emu3 image has a fixed length)")
    args.cfg = GUIDANCE_SCALE if args.cfg is None else args.cfg
    args.top_k = TOP_K if args.top_k is None else args.top_k
    m = _load(args)
    bar = ProgressBar("generate", not args.quiet)
    result = text_to_image(
        m, args.prompt, ratio=args.ratio or "1:1", image_area=args.image_area, cfg=args.cfg,
        positive_prompt=args.positive_prompt, negative_prompt=args.negative_prompt, sampling=_sampling(args, m),
        seed=args.seed, num_images=args.batch, progress=bar, draft_len=args.speculative,
    )
    bar.close()
    paths = _output_paths(args.output, len(result.images))
    for image, path in zip(result.images, paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    if not args.json:
        print("\n".join(str(p) for p in paths))
    return {"images": [str(p) for p in paths], "token_ids": result.token_ids, "grid": list(result.grid),
            "seeds": result.seeds, "seconds": round(result.seconds, 3), "forwards": result.forwards}


def cmd_chat(args: argparse.Namespace) -> dict:
    from emu3.pipelines.understanding import answer
    from emu3.vision import load_image

    args.model = str(model_or_bundled(args.model))
    if _is_emu35(args.model):
        from emu3.emu35.cli import chat_from_args

        return chat_from_args(args)
    if args.image_area is not None:
        raise ValueError("--image-area applies to Emu3.5 checkpoints only (Emu3 sizes images by its processor)")
    images = [load_image(p) for p in args.image]
    m = _load(args)
    bar = ProgressBar("answer", not args.quiet)
    result = answer(m, images, args.question, max_new_tokens=args.max_new_tokens, sampling=_sampling(args),
                    seed=args.seed, progress=bar)
    bar.close()
    if not args.json:
        print(result.text)
    return {"text": result.text, "token_ids": result.token_ids}


def cmd_reconstruct(args: argparse.Namespace) -> dict:
    from emu3.pipelines.frames_output import check_frames_output, save_frames
    from emu3.pipelines.reconstruct import reconstruct
    from emu3.vision import load_frames

    frames = load_frames(args.input)
    check_frames_output(args.output, len(frames))
    m = _load(args, lm=False)
    result = reconstruct(m.vq, m.processor, frames)
    out = save_frames(result.frames, args.output)
    if not args.json:
        print(f"{out} (PSNR {result.psnr:.2f} dB)")
    return {"codes": result.codes.tolist(), "codes_shape": list(result.codes.shape), "psnr": result.psnr,
            "output": str(out)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "greedy_default"):
            settle_sampling_flags(args)
        payload = args.run(args)
    except (ValueError, FileNotFoundError, KeyError, OSError, MemoryError, ImportError) as exc:
        # Library errors are written to name the problem; a traceback would only hide it.
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc) or type(exc).__name__
        print(f"emu3 {args.command}: error: {message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())

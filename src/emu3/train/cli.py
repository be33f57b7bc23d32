"""Argument parsing for `emu3 prepare`, `emu3 train`, `emu3 train-vq`, `emu3 merge-codes` and `emu3 export`.

Flags are generated from the config dataclasses (`--micro-batch-size` for `micro_batch_size`, with
each field's help), so a recipe file and the command line name settings the same way. Only flags
that are given override the recipe (`--config FILE`, TOML or JSON), which overrides the defaults.
Under torchrun every process runs the command; only rank 0 prints. Heavy imports happen inside
the commands, so `emu3 --help` stays fast. `emu3.cli` registers these through `add_parsers`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from typing import Any

from emu3.cli import SEED
from emu3.train.config import PrepareConfig, SFTConfig, VQTrainConfig, load_config

_NOT_FLAGS = {"command", "run", "config", "json"}
_TYPES = {"seed": SEED}  # fields whose flag needs more than its annotated type: refused when parsed


def _add_fields(parser: argparse.ArgumentParser, cls: type, positional: tuple[str, ...] = ()) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind, help_text = hints[f.name], f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if f.name in positional:
            parser.add_argument(f.name, help=help_text)
            continue
        names = [f"--{f.name.replace('_', '-')}"] + (["-o"] if f.name == "output" else [])
        common = {"dest": f.name, "default": argparse.SUPPRESS, "help": f"{help_text} (default: {default})"}
        if kind is bool:
            parser.add_argument(*names, action=argparse.BooleanOptionalAction, **common)
        elif typing.get_origin(kind) is tuple:
            parser.add_argument(*names, nargs=len(typing.get_args(kind)), type=typing.get_args(kind)[0],
                                metavar="X", **common)
        elif typing.get_origin(kind) is list:
            parser.add_argument(*names, nargs="+", action="extend", metavar="VALUE", **common)
        else:
            base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)  # X | None -> X
            parser.add_argument(*names, type=_TYPES.get(f.name, base), metavar=f.name.split("_")[-1].upper(),
                                **common)


def _config(cls: type, args: argparse.Namespace) -> Any:
    flags = {k: v for k, v in vars(args).items() if k not in _NOT_FLAGS}
    return load_config(cls, getattr(args, "config", None), flags)


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _report(args: argparse.Namespace, summary: dict[str, Any], lines: list[str]) -> dict[str, Any]:
    if not _is_main():
        args.json = False  # one JSON document per run, from rank 0
        return {}
    if not args.json:
        print("\n".join(lines))
    return summary


def _skipped(summary: dict[str, Any], what: str) -> str:
    """"skipped N WHAT: n1 reason1, n2 reason2" from a summary's `skipped` and `skipped_by_reason`."""
    reasons = ", ".join(f"{n} {r}" for r, n in sorted(summary["skipped_by_reason"].items())) or "none"
    return f"skipped {summary['skipped']} {what}: {reasons}"


def _skipped_records(summary: dict[str, Any]) -> list[str]:
    """One line for each of the first 20 skipped manifest records (naming its manifest when known)."""
    return [f"  {s['manifest'] + ' ' if 'manifest' in s else ''}line {s['line']}: {s['reason']}: {s['message']}"
            for s in summary["skipped_records"][:20]]


def cmd_prepare(args: argparse.Namespace) -> dict[str, Any]:
    from emu3.cli import resolve_device
    from emu3.train.prepare import prepare

    cfg = _config(PrepareConfig, args)
    summary = prepare(cfg, resolve_device(cfg.device))
    lines = [f"{cfg.output}: {summary['examples']} examples from {summary['records']} records, "
             f"{summary['tokens']} tokens ({summary['loss_tokens']} supervised); tasks {summary['tasks']}",
             f"{_skipped(summary, 'records')}; shards written {summary['shards_written']}, "
             f"reused {summary['shards_reused']}"]
    return _report(args, summary, lines + _skipped_records(summary))


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from emu3.train.sft import train_lm

    summary = train_lm(_config(SFTConfig, args))
    loss = summary.get("loss", float("nan"))
    lines = [f"trained {summary['steps']} steps on {summary['examples']} examples, final loss {loss:.4f}; "
             f"model exported to {summary.get('export')}", _skipped(summary, "examples")]
    if summary["tasks_lost"]:
        lines.append(f"warning: no example of task {', '.join(summary['tasks_lost'])} was trained on")
    return _report(args, summary, lines)


def cmd_train_vq(args: argparse.Namespace) -> dict[str, Any]:
    from emu3.train.vq import train_vq

    summary = train_vq(_config(VQTrainConfig, args))
    loss, psnr = summary.get("loss", float("nan")), summary.get("psnr", float("nan"))
    lines = [f"trained {summary['steps']} steps on {summary['records']} records, final loss {loss:.4f}, "
             f"PSNR {psnr:.2f} dB; saved to {summary.get('export')}", _skipped(summary, "records")]
    return _report(args, summary, lines + _skipped_records(summary))


def cmd_merge_codes(args: argparse.Namespace) -> dict[str, Any]:
    from pathlib import Path

    from emu3 import checkpoint
    from emu3.cli import resolve_device
    from emu3.train import export
    from emu3.train.code_merge import merge_uniform_codes

    source = checkpoint.resolve(args.vision_tokenizer)
    export.check_vision_tokenizer_output(Path(args.output), [source, Path(args.data)])
    vq, processor = checkpoint.load_vision_tokenizer(source, device=resolve_device(args.device))
    report = merge_uniform_codes(vq, processor, args.data, tol=args.tol, color_tol=args.color_tol,
                                  samples=args.samples, seed=args.seed)
    out = export.save_vision_tokenizer(vq.state_dict(), vq.config, processor, Path(args.output),
                                       vq.quantize.aliases())
    return _report(args, {"export": str(out), **dataclasses.asdict(report)}, [
        f"{report.merged_codes} codes of uniform patches now encode as one of {report.groups} canonical codes; "
        f"{report.canonical_share:.1%} of the sample's uniform patches ({report.uniform_patches:.1%} of all) get "
        f"a canonical code; distinct codes in the sample {report.codes_before} -> {report.codes_after}; "
        f"saved to {out}"])


def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    from pathlib import Path

    from emu3.train import sft, state, vq

    folder = Path(args.checkpoint)
    if (folder / state.CHECKPOINTS).is_dir():  # a run's output folder: its latest checkpoint
        folder = state.latest(folder) or folder
    saved = state.read_state(folder)
    dest = Path(args.output) if args.output else folder.parent.parent / "export"
    if saved.get("kind") == "vq":
        out = vq.export_checkpoint(folder, dest, VQTrainConfig(**saved["config"]))
    else:
        out = sft.export_checkpoint(folder, dest, SFTConfig(**saved["config"]))
    return _report(args, {"export": str(out), "step": saved["step"]}, [f"step {saved['step']} exported to {out}"])


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the training subcommands on the `emu3` parser's subparsers."""
    specs = [
        ("prepare", "tokenize a JSONL manifest into training shards", PrepareConfig, cmd_prepare, ("manifest",)),
        ("train", "fine-tune (or train from scratch) the language model", SFTConfig, cmd_train, ()),
        ("train-vq", "train or fine-tune the vision tokenizer", VQTrainConfig, cmd_train_vq, ()),
    ]
    for name, help_text, cls, run, positional in specs:
        p = sub.add_parser(name, help=help_text, description=(cls.__doc__ or "").strip())
        if cls is not PrepareConfig:
            p.add_argument("--config", help="recipe file (TOML or JSON) with any of the settings below")
        _add_fields(p, cls, positional)
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        p.set_defaults(run=run)
    p = sub.add_parser("merge-codes", help="make flat areas of one color tokenize to one code",
                       description="Alias the codes of uniform patches of a trained vision tokenizer (see "
                                   "emu3.train.code_merge): flat areas of one color then encode to one canonical "
                                   "code. Weights are untouched; tokenize data again afterwards.")
    p.add_argument("--vision-tokenizer", required=True, help="the trained vision-tokenizer folder")
    p.add_argument("--data", required=True, help="JSONL manifest of pictures to measure the codes on")
    p.add_argument("-o", "--output", required=True, help="folder for the tokenizer with its code aliases")
    p.add_argument("--tol", type=float, default=0.04,
                   help="uniform: mean deviation from the patch's mean color under this, [0, 1] scale (default: 0.04)")
    p.add_argument("--color-tol", type=float, default=0.1,
                   help="uniform codes whose colors differ by less than this on every channel merge (default: 0.1)")
    p.add_argument("--samples", type=int, default=1024, help="pictures to measure on (default: 1024)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto (default: cpu)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(run=cmd_merge_codes)
    p = sub.add_parser("export", help="export a training checkpoint as a model folder that generate/chat load",
                       description="Write the model of a checkpoint (or of a run's latest one) in the official "
                                   "layout. Paths saved in the checkpoint's settings are read as they were given "
                                   "to the training command (run it from the same folder, or use absolute paths).")
    p.add_argument("checkpoint", help="a checkpoint folder (OUT/checkpoints/step-N) or a run's output folder")
    p.add_argument("-o", "--output", help="destination folder (default: OUT/export of the run)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(run=cmd_export)


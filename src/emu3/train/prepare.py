"""`emu3 prepare`: a JSONL manifest -> shards of token ids, loss masks and grid shapes.

Each record's media are read, preprocessed, encoded by the vision tokenizer and laid out by
`examples.py`. Images to generate (text-to-image, video) are first rescaled to the model's
`image_area` keeping the aspect ratio (the official recipe, spec 8.1); images to understand (VQA)
are preprocessed exactly as `emu3 chat` does at inference. Shard k holds manifest records
[k*R, (k+1)*R), so a rerun after an interruption skips every shard already on disk and writes only
the rest; `dataset.json` pins the settings, and a rerun with other settings is refused (or, with
`overwrite`, starts over: it deletes the files prepare writes and leaves every other file, such as a
manifest and images kept in the same folder). `dataset.json` also records a fingerprint of the text
tokenizer (`tokenizer_fingerprint`), so that training refuses data whose ids mean other tokens to its
model; a vision tokenizer with more codes than the vocabulary has visual ids is refused. A bad record (missing
file, corrupt image, empty text, too long for the context, ...) is counted with its reason and
skipped; it never stops the run. This module does not train and does not shuffle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from emu3 import checkpoint
from emu3.compact_vocab import CompactTokenizer, load_tokenizer
from emu3.config import LMConfig
from emu3.tokenizer import Tokenizer
from emu3.train import atomic, examples
from emu3.train.config import PrepareConfig
from emu3.train.manifest import Record, RecordError, parse_record, read_lines
from emu3.train.metrics import Progress
from emu3.train.shards import (
    DATASET_FILE,
    SHARD_GLOB,
    DataError,
    read_stats,
    shard_path,
    write_shard,
)
from emu3.vision import ImageProcessor, VisionTokenizer, load_frames, load_image, to_rgb

SUMMARY_FILE = "summary.json"
DATA_FORMAT = "emu3-train-data/1"


def lm_config(folder: Path) -> LMConfig:
    """The LM config of an original or -hf folder, without reading any weights."""
    config = checkpoint.read_config(folder)
    return LMConfig.from_official(config["text_config"] if checkpoint.is_hf_format(config) else config)


def rescale_to_area(image: Image.Image, area: int) -> Image.Image:
    """Resize to about `area` pixels keeping the aspect ratio (the official prepare step)."""
    scale = math.sqrt(area / (image.width * image.height))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, resample=Image.Resampling.BICUBIC)


class Encoder:
    """Media -> code grids with one vision tokenizer and processor."""

    def __init__(self, vq: VisionTokenizer, processor: ImageProcessor, image_area: int) -> None:
        self.vq, self.processor, self.image_area = vq, processor, image_area
        self.device = next(vq.parameters()).device

    def pixels(self, images: list[Image.Image], rescale: bool) -> torch.Tensor:
        """Preprocessed (N, 3, H, W) pixels; `rescale` first brings generation targets to `image_area`."""
        images = [to_rgb(im) for im in images]
        if rescale:
            images = [rescale_to_area(im, self.image_area) for im in images]
        frames = self.processor.preprocess(images)
        if len({tuple(f.shape) for f in frames}) != 1:
            raise RecordError("unreadable media", f"frames differ in size: {sorted({tuple(f.shape) for f in frames})}")
        return torch.stack(frames).to(self.device)  # (N, 3, H, W)

    @torch.inference_mode()
    def images(self, images: list[Image.Image], rescale: bool = True) -> torch.Tensor:
        return self.vq.encode(self.pixels(images, rescale)).cpu()  # (N, h, w)

    @torch.inference_mode()
    def clip(self, frames: list[Image.Image]) -> torch.Tensor:
        factor = self.vq.temporal_factor
        frames = frames + frames[-1:] * (-len(frames) % factor)  # complete the last group of 4
        return self.vq.encode(self.pixels(frames, True)[None])[0].cpu()  # (t, h, w)


def build_example(record: Record, tok: Tokenizer | CompactTokenizer, enc: Encoder,
                  cfg: PrepareConfig) -> examples.Example:
    if record.task == "vqa":  # images to understand are processed as `emu3 chat` processes them
        codes = enc.images([load_image(record.image)], rescale=False)[0]
        return examples.chat(tok, [codes], [(t.question, t.answer) for t in record.turns], vocab=tok.vocab)
    if record.task == "t2i":
        grid = enc.images([load_image(record.image)])[0]
        return examples.text_to_visual(tok, record.caption, [grid], vocab=tok.vocab)
    frames = [load_image(p) for p in record.frames] if record.frames else load_frames(record.video)
    frames = frames[:: cfg.frame_stride][: cfg.max_frames]
    blocks = [enc.clip(frames)] if cfg.video_mode == "clip" else list(enc.images(frames))
    return examples.text_to_visual(tok, record.caption, blocks, task="video", vocab=tok.vocab)


def _reason(exc: Exception) -> str:
    if isinstance(exc, RecordError):
        return exc.reason
    if isinstance(exc, FileNotFoundError):
        return "missing file"
    if isinstance(exc, (ValueError, OSError, ImportError, EOFError)):
        return "unreadable media"
    return f"error ({type(exc).__name__})"


def tokenizer_fingerprint(tok: Tokenizer | CompactTokenizer) -> str:
    """A digest of what each id means to `tok`: its control ids, visual range and (compact) text table."""
    table = {"vocab": dataclasses.asdict(tok.vocab), "vocab_size": tok.vocab_size, "ranks": getattr(tok, "ranks", None)}
    return hashlib.sha256(json.dumps(table, sort_keys=True).encode("utf-8")).hexdigest()


def matches_tokenizer(info: dict[str, Any], tok: Tokenizer | CompactTokenizer) -> bool:
    """Whether the data folder of `info` (its dataset.json) was tokenized with ids as `tok` means them
    (a folder written before fingerprints were recorded: with a vocabulary of the same size)."""
    if "tokenizer_fingerprint" in info:
        return info["tokenizer_fingerprint"] == tokenizer_fingerprint(tok)
    return info.get("vocab_size") == tok.vocab_size


def _settings(cfg: PrepareConfig, lines: list[tuple[int, str]], model: Path, vq: Path, tok: Tokenizer,
              area: int, max_len: int) -> dict[str, Any]:
    digest = hashlib.sha256("\n".join(text for _, text in lines).encode("utf-8")).hexdigest()
    return {
        "format": DATA_FORMAT, "manifest": str(Path(cfg.manifest).resolve()), "manifest_sha256": digest,
        "num_records": len(lines), "records_per_shard": cfg.records_per_shard,
        "num_shards": max(1, math.ceil(len(lines) / cfg.records_per_shard)),
        "tokenizer": str(model.resolve()), "vision_tokenizer": str(vq.resolve()), "vocab_size": tok.vocab_size,
        "tokenizer_fingerprint": tokenizer_fingerprint(tok), "image_area": area, "max_seq_len": max_len, "video_mode": cfg.video_mode, "max_frames": cfg.max_frames,
        "frame_stride": cfg.frame_stride,
    }


def _claim_folder(out: Path, settings: dict[str, Any], overwrite: bool) -> None:
    info_path = out / DATASET_FILE
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file, not a data folder; use another --output")
    if info_path.is_file():
        try:
            old = json.loads(info_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            if not overwrite:
                raise DataError(f"{info_path} is unreadable ({exc}); pass --overwrite to prepare {out} again "
                                "from the start") from None
            old = {}
        if old == settings:
            return  # resume
        if not overwrite:
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise DataError(f"{out} was prepared with other settings (differing: {changed}); "
                            "use another --output or pass --overwrite")
    elif out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{out} exists and is not an emu3 data folder; use another --output or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    for name in (DATASET_FILE, SUMMARY_FILE, SHARD_GLOB):  # what prepare writes, and its temporary files
        for path in [*out.glob(name), *out.glob(atomic.TMP_PREFIX + name)]:
            path.unlink()
    atomic.write_text(info_path, json.dumps(settings, indent=2) + "\n")


def prepare(cfg: PrepareConfig, device: torch.device) -> dict[str, Any]:
    """Write (or finish writing) the data folder; returns the summary, also saved as summary.json."""
    start = time.perf_counter()
    model = checkpoint.resolve(cfg.model)
    vq_dir = Path(cfg.vision_tokenizer) if cfg.vision_tokenizer else checkpoint.find_vision_tokenizer(model)
    lm_cfg = lm_config(model)
    area = cfg.image_area or lm_cfg.image_area
    max_len = cfg.max_seq_len or lm_cfg.max_position_embeddings
    lines = read_lines(cfg.manifest)
    if not lines:
        raise DataError(f"manifest {cfg.manifest} holds no records")
    tok = load_tokenizer(model)
    out = Path(cfg.output)
    settings = _settings(cfg, lines, model, vq_dir, tok, area, max_len)
    vq, processor = checkpoint.load_vision_tokenizer(vq_dir, device=device)
    if vq.config.codebook_size > tok.vocab.codebook_size:  # its codes would become ids past the vocabulary
        raise DataError(f"the vision tokenizer {vq_dir} has {vq.config.codebook_size} codes, but the vocabulary of "
                        f"{model} has only {tok.vocab.codebook_size} visual ids: use the vision tokenizer of "
                        "that model")
    _claim_folder(out, settings, cfg.overwrite)
    enc = Encoder(vq, processor, area)
    base = Path(cfg.manifest).resolve().parent
    per = cfg.records_per_shard
    progress = Progress("prepare", len(lines), not cfg.quiet)
    written = reused = 0
    all_stats = []
    for k in range(settings["num_shards"]):
        path = shard_path(out, k)
        chunk = lines[k * per:(k + 1) * per]
        stats = read_stats(path) if path.is_file() else None
        if stats is not None:
            reused += 1
            progress.skip(len(chunk))
        else:
            stats = _write_one_shard(path, chunk, base, tok, enc, cfg, max_len, progress, k * per, all_stats)
            written += 1
        all_stats.append(stats)
        progress.update((k * per) + len(chunk), skipped=sum(len(s["skipped"]) for s in all_stats))
    progress.close()
    summary = _summarize(all_stats, written, reused, time.perf_counter() - start)
    atomic.write_text(out / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary


def _write_one_shard(path, chunk, base, tok, enc, cfg, max_len, progress, done, earlier) -> dict[str, Any]:
    kept: list[examples.Example] = []
    skipped: list[dict[str, Any]] = []
    for i, (line, text) in enumerate(chunk):
        try:
            record = parse_record(line, text, base)
            example = build_example(record, tok, enc, cfg)
            if len(example.ids) > max_len:
                raise RecordError("too long", f"line {line}: {len(example.ids)} tokens, more than the "
                                              f"{max_len} of the model's context (grid {example.grids})")
            kept.append(example)
        except Exception as exc:  # a bad record is reported and skipped, whatever went wrong with it
            skipped.append({"line": line, "reason": _reason(exc), "message": str(exc)})
        progress.update(done + i + 1, skipped=len(skipped) + sum(len(s["skipped"]) for s in earlier))
    tasks: dict[str, int] = {}
    for e in kept:
        tasks[e.task] = tasks.get(e.task, 0) + 1
    stats = {"records": len(chunk), "examples": len(kept), "tokens": sum(len(e.ids) for e in kept),
             "loss_tokens": sum(sum(e.loss_mask) for e in kept), "tasks": tasks, "skipped": skipped}
    write_shard(path, kept, stats)
    return stats


def _summarize(all_stats: list[dict[str, Any]], written: int, reused: int, seconds: float) -> dict[str, Any]:
    skipped = [s for stats in all_stats for s in stats["skipped"]]
    by_reason: dict[str, int] = {}
    tasks: dict[str, int] = {}
    for s in skipped:
        by_reason[s["reason"]] = by_reason.get(s["reason"], 0) + 1
    for stats in all_stats:
        for task, n in stats.get("tasks", {}).items():
            tasks[task] = tasks.get(task, 0) + n
    return {
        "records": sum(s["records"] for s in all_stats), "examples": sum(s["examples"] for s in all_stats),
        "tokens": sum(s["tokens"] for s in all_stats), "loss_tokens": sum(s.get("loss_tokens", 0) for s in all_stats),
        "tasks": tasks, "skipped": len(skipped), "skipped_by_reason": by_reason, "skipped_records": skipped,
        "shards_written": written, "shards_reused": reused, "seconds": round(seconds, 3),
    }

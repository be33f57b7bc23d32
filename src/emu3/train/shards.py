"""Pre-tokenized training shards: safetensors files of concatenated ids, loss masks and grid shapes.

A data folder holds `dataset.json` (how it was made: tokenizer, vision tokenizer, settings, the
expected number of shards) and `shard-NNNNN.safetensors` files, each with the tensors

    ids (N,) int32, loss_mask (N,) uint8, offsets (n+1,) int64      examples i = ids[offsets[i]:offsets[i+1]]
    prompt_span (n, 2) int64, loss_tokens (n,) int64, task (n,) uint8
    grids (G, 3) int32, grid_offsets (n+1,) int64                   (frames, h, w) of each visual block

and a JSON `stats` metadata entry (records, tokens, skipped records with their reasons). Shards are
written atomically; a reader never unpickles anything. `ShardSet` opens many shards of one or more
folders and reads examples lazily (memory-mapped), so datasets larger than memory work. This module
does not decide what goes into an example (`examples.py`) or in what order it is used (`batching.py`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from emu3.train import atomic
from emu3.train.examples import TASKS, Example

DATASET_FILE = "dataset.json"
SHARD_PATTERN = "shard-{:05d}.safetensors"
SHARD_GLOB = "shard-*.safetensors"
FORMAT = "emu3-train-shard/1"


class DataError(ValueError):
    """A data folder or shard is missing, incomplete or corrupt."""


def shard_path(folder: Path, index: int) -> Path:
    return folder / SHARD_PATTERN.format(index)


def write_shard(path: Path, examples: Sequence[Example], stats: dict[str, Any]) -> None:
    """Write `examples` (possibly none) and their `stats` to one shard file, atomically."""
    lengths = [len(e.ids) for e in examples]
    grids = [g for e in examples for g in e.grids]
    tensors = {
        "ids": torch.tensor([t for e in examples for t in e.ids], dtype=torch.int32),
        "loss_mask": torch.tensor([m for e in examples for m in e.loss_mask], dtype=torch.uint8),
        "offsets": torch.tensor(np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]), dtype=torch.int64),
        "prompt_span": torch.tensor([list(e.prompt_span) for e in examples], dtype=torch.int64).reshape(-1, 2),
        "loss_tokens": torch.tensor([sum(e.loss_mask) for e in examples], dtype=torch.int64),
        "task": torch.tensor([TASKS.index(e.task) for e in examples], dtype=torch.uint8),
        "grids": torch.tensor(grids, dtype=torch.int32).reshape(-1, 3),
        "grid_offsets": torch.tensor(np.concatenate([[0], np.cumsum([len(e.grids) for e in examples], dtype=np.int64)]),
                                     dtype=torch.int64),
    }
    meta = {"format": FORMAT, "tasks": json.dumps(TASKS), "stats": json.dumps(stats)}
    atomic.write_file(path, lambda p: save_file(tensors, str(p), metadata=meta))


def read_stats(path: Path) -> dict[str, Any] | None:
    """The stats of a complete shard, or None if the file is absent or unreadable (to be rewritten)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            return None
        return json.loads(meta["stats"])
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError):
        return None


@dataclass
class Sample:
    """One example as read back for training."""

    ids: torch.Tensor  # (L,) int64
    loss_mask: torch.Tensor  # (L,) bool
    prompt_span: tuple[int, int]
    task: str

    def without_prompt(self) -> Sample:
        """The same example with its prompt span (the caption) removed: caption dropout."""
        a, b = self.prompt_span
        if b <= a:
            return self
        ids = torch.cat([self.ids[:a], self.ids[b:]])
        mask = torch.cat([self.loss_mask[:a], self.loss_mask[b:]])
        return Sample(ids, mask, (a, a), self.task)


class Shard:
    """One shard file: the small per-example tables in memory, ids and masks read on demand."""

    def __init__(self, path: Path) -> None:
        try:
            self._file = safe_open(str(path), framework="pt")
            meta = self._file.metadata() or {}
            if meta.get("format") != FORMAT:
                raise DataError(f"{path} is not an emu3 training shard (format {meta.get('format')!r})")
            self.tasks = json.loads(meta["tasks"])
            self.offsets = self._file.get_tensor("offsets").numpy()
            self.spans = self._file.get_tensor("prompt_span").numpy()
            self.loss_tokens = self._file.get_tensor("loss_tokens").numpy()
            self.task_ids = self._file.get_tensor("task").numpy()
            self._ids = self._file.get_slice("ids")
            self._mask = self._file.get_slice("loss_mask")
        except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as exc:
            raise DataError(f"cannot read shard {path}: {exc}") from exc
        self.path = path

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sample(self, i: int) -> Sample:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        span = (int(self.spans[i, 0]), int(self.spans[i, 1]))
        return Sample(self._ids[a:b].long(), self._mask[a:b].bool(), span, self.tasks[int(self.task_ids[i])])


def read_dataset_info(folder: Path) -> dict[str, Any]:
    path = folder / DATASET_FILE
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is a file, not a folder"
        raise DataError(f"{folder} is not a prepared data folder: it {what} (training data are folders "
                        "written by `emu3 prepare MANIFEST -o DIR`)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{folder} is not a prepared data folder: {DATASET_FILE} is missing "
                        "(run `emu3 prepare`)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is corrupt: {exc}") from exc


def open_folder(folder: str | Path) -> tuple[dict[str, Any], list[Shard]]:
    """The dataset info and all shards of a complete data folder."""
    folder = Path(folder)
    info = read_dataset_info(folder)
    expected = int(info.get("num_shards", -1))
    missing = [shard_path(folder, k).name for k in range(expected) if not shard_path(folder, k).is_file()]
    if expected < 0 or missing:
        raise DataError(f"{folder} is incomplete: missing shards {missing[:5]} (re-run `emu3 prepare` to finish it)")
    return info, [Shard(shard_path(folder, k)) for k in range(expected)]


def write_dataset(folder: str | Path, examples: Sequence[Example], info: dict[str, Any] | None = None,
                  per_shard: int = 1000) -> Path:
    """Write in-memory examples as a complete data folder (for tests, benchmarks and custom pipelines)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chunks = [examples[i:i + per_shard] for i in range(0, len(examples), per_shard)] or [[]]
    for k, chunk in enumerate(chunks):
        tokens = sum(len(e.ids) for e in chunk)
        write_shard(shard_path(folder, k), chunk, {"records": len(chunk), "examples": len(chunk), "tokens": tokens,
                                                   "skipped": []})
    atomic.write_text(folder / DATASET_FILE, json.dumps({**(info or {}), "num_shards": len(chunks)}, indent=2) + "\n")
    return folder

"""Training telemetry: a progress line on stderr, a JSONL log and, when installed, TensorBoard.

`Progress` redraws one stderr line (at most every 0.2 s) with a bar, counts, an ETA from the rate of
this process' work (a resumed run's earlier steps and reused results do not count) and free-form fields.
`MetricsLog` appends one JSON object per call to `metrics.jsonl` (append mode, so a resumed run
continues the same file, once `drop_after` has removed the records of the steps it does again) and
mirrors the numbers to TensorBoard if asked and available.
`peak_memory_gb` reports the CUDA peak allocation on GPU and the process' peak RSS on CPU.
Only rank 0 should create these; this module knows nothing of distributed training or models.
"""

from __future__ import annotations

import json
import resource
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from emu3.train import atomic


class Progress:
    """`label [#####.....] done/total key=value ...` on stderr."""

    def __init__(self, label: str, total: int, enabled: bool = True, done: int = 0) -> None:
        """`done`: the count already reached when this process starts (a resumed run's step)."""
        self.label, self.total, self.enabled = label, max(total, 1), enabled
        self.given = done  # counted as done without work in this process: left out of the rate
        self.start = self.last = time.perf_counter()
        self.drawn = False

    def skip(self, n: int) -> None:
        """Count `n` more as done without work in this process (results an earlier run left), so the
        rate, and with it the ETA, leaves them out; `update` still shows them in the count."""
        self.given += n

    def update(self, done: int, **fields: Any) -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self.last < 0.2 and done < self.total):
            return
        self.last, self.drawn = now, True
        fill = int(30 * min(done, self.total) / self.total)
        rate = (done - self.given) / max(now - self.start, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else 0.0
        extra = " ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        sys.stderr.write(f"\r{self.label} [{'#' * fill}{'.' * (30 - fill)}] {done}/{self.total} "
                         f"eta {eta:.0f}s {extra}\033[K")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


class MetricsLog:
    """Append-only JSONL log (+ optional TensorBoard)."""

    def __init__(self, path: Path, tensorboard_dir: Path | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warnings.warn("TensorBoard logging was asked for but tensorboard is not installed "
                              "(pip install 'emu3[train]'); logging to JSONL only", stacklevel=2)
            else:
                self.writer = SummaryWriter(str(tensorboard_dir))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None and "step" in record:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def drop_after(path: Path, step: int) -> None:
    """Rewrite the log at `path` (atomically) without its records past `step`: the steps a run resumed
    from the checkpoint of `step` does again (and a last line cut short by a crash)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line + "\n")
        except json.JSONDecodeError:
            continue
    atomic.write_text(path, "".join(kept))


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL metrics log."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]

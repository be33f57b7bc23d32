"""The model's one owner: a bounded queue of jobs and the single thread that runs them, in batches.

Request handlers build a job (`ImageJob`, `ChatJob`) and `submit` it; a full queue raises
`QueueFull` at once instead of waiting. One worker thread takes jobs in arrival order, so the model
never runs two generations at a time. When it takes an image job it also takes every waiting image
job that can share the same `text_to_image` call, up to `max_batch_images` images:

* the same `ImageSpec` (ratio, guidance, prompts around the user's, sampling), and
* seeds that make one run. `text_to_image` seeds image i of a call with `seed + i`, as
  `emu3 generate --batch` does, so a request with seed s and n images gets s, s+1, ... whatever the
  batch. Seeded requests join when their seeds extend the run (before or after it: requests with
  consecutive seeds batch together, others wait their turn); requests without a seed take the
  next numbers after it.

Chat jobs run one at a time. A job's events (progress, partial-image previews, text deltas, then
its result or error) are pushed onto an asyncio queue on the handler's event loop. `cancel` (the
client left) removes a waiting job; a running batch stops early once all of its jobs are cancelled.
This module knows nothing of HTTP: errors are `ValueError` (the request's fault) or anything else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from PIL import Image

from emu3.generation import SamplingConfig
from emu3.pipelines import Conversation, Emu3, text_to_image
from emu3.prompting import Turn, grid_for_ratio, parse_image
from emu3.serve.media import png_base64
from emu3.serve.settings import Settings
from emu3.serve.tap import TappedModel, TokenTap

log = logging.getLogger("emu3.serve")


class QueueFull(Exception):
    """The queue holds `Settings.queue_size` waiting jobs; `retry_after` is a hint in seconds."""

    def __init__(self, waiting: int, retry_after: int) -> None:
        super().__init__(f"the queue is full ({waiting} requests waiting)")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The server is stopping and takes no more work."""


class _Abandoned(Exception):
    """Raised inside a generation's progress callback to stop it: every client of it has left."""


@dataclass(frozen=True)
class ImageSpec:
    """Everything image jobs must share to run in one `text_to_image` call."""

    ratio: str
    cfg: float
    positive_prompt: str
    negative_prompt: str
    sampling: SamplingConfig


@dataclass
class ImageOutcome:
    images_b64: list[str]
    seeds: list[int]
    size: tuple[int, int]  # (width, height) in pixels
    batch_images: int      # how many images the model call that made these generated in all


@dataclass
class ChatOutcome:
    text: str
    finish_reason: str     # "stop" (the model ended its answer) or "length" (max_new_tokens reached)
    completion_tokens: int


class Job:
    """A unit of work and the channel back to the request that made it (made on its event loop)."""

    def __init__(self, stream: bool) -> None:
        self.stream = stream                 # wants progress events, not just the result
        self.events: asyncio.Queue = asyncio.Queue()
        self.finished = False
        self._loop = asyncio.get_running_loop()
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def emit(self, event: dict) -> None:
        """Queue an event for the handler; safe from any thread, a no-op once the loop is gone."""
        if event["type"] in ("result", "error"):
            self.finished = True
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop has closed: nobody is listening any more
            pass


class ImageJob(Job):
    def __init__(self, prompt: str, n: int, spec: ImageSpec, seed: int | None, *, stream: bool = False) -> None:
        super().__init__(stream)
        self.prompt, self.n, self.spec, self.seed = prompt, n, spec, seed
        self.seeds: list[int] = []           # assigned when the worker batches the job


class ChatJob(Job):
    """The last user turn (`text`, `images`) after earlier `history` turns (text, images, answer ids)."""

    def __init__(self, system: str, history: list[tuple[str, list[Image.Image], list[int]]], text: str,
                 images: list[Image.Image], *, max_new_tokens: int, sampling: SamplingConfig, seed: int | None,
                 stream: bool = False) -> None:
        super().__init__(stream)
        self.system, self.history, self.text, self.images = system, history, text, images
        self.max_new_tokens, self.sampling, self.seed = max_new_tokens, sampling, seed


class TextDeltas:
    """Pieces of a growing answer whose concatenation is exactly the final (stripped) answer text.

    Leading spaces, trailing spaces (stripped at the end) and a trailing incomplete UTF-8 character
    are held back until the text after them is known.
    """

    def __init__(self) -> None:
        self.sent = ""

    def update(self, text: str) -> str:
        stable = text.lstrip().rstrip().rstrip("\ufffd")
        if len(stable) <= len(self.sent) or not stable.startswith(self.sent):
            return ""
        piece, self.sent = stable[len(self.sent):], stable
        return piece

    def finish(self, final: str) -> str:
        return final[len(self.sent):] if final.startswith(self.sent) else ""


@dataclass
class Stats:
    batches: int = 0        # text_to_image calls
    images: int = 0
    chats: int = 0
    cancelled: int = 0      # jobs whose client left before they finished
    failed: int = 0
    batch_seconds: float = 0.0  # moving average of a model call's duration, for Retry-After
    batch_sizes: dict[int, int] = field(default_factory=dict)  # images per call -> number of calls


class Worker:
    """Owns `m`; runs submitted jobs on one thread. `start` before submitting work, `stop` at the end."""

    def __init__(self, m: Emu3, settings: Settings) -> None:
        m.require_lm()
        self.m, self.settings = m, settings
        self.stats = Stats()
        self._pending: list[Job] = []
        self._running: list[Job] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="emu3-model", daemon=True)

    # -- the handlers' side ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def begin_stop(self) -> None:
        """Refuse new work, fail waiting jobs, and stop a running batch at its next step; returns at once."""
        with self._cond:
            self._stopping = True
            waiting, self._pending = self._pending, []
            self._cond.notify_all()
        for job in waiting:
            job.emit({"type": "error", "error": ShuttingDown("the server is shutting down")})

    def stop(self, timeout: float = 30.0) -> None:
        """`begin_stop`, then join the thread."""
        self.begin_stop()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, job: Job) -> int:
        """Queue `job`; returns how many jobs wait before it. Raises QueueFull or ShuttingDown."""
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            if len(self._pending) >= self.settings.queue_size:
                retry = max(1, math.ceil(self.stats.batch_seconds))
                raise QueueFull(len(self._pending), retry)
            self._pending.append(job)
            self._cond.notify()
            return len(self._pending) - 1

    def cancel(self, job: Job) -> None:
        """The client is gone: drop the job if it still waits, else let its batch stop early."""
        if job.finished or job.cancelled:
            return
        job._cancelled.set()
        with self._cond:
            if job in self._pending:
                self._pending.remove(job)
            self.stats.cancelled += 1

    def snapshot(self) -> dict:
        """Queue and counters, for /health."""
        with self._cond:
            waiting, running = len(self._pending), len(self._running)
        stats = dataclasses.asdict(self.stats)
        stats["batch_seconds"] = round(stats["batch_seconds"], 3)
        return {"queue": {"waiting": waiting, "capacity": self.settings.queue_size, "running": running},
                "stats": stats}

    # -- the worker thread -------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                self._running = self._take()
            try:
                self._run(self._running)
            finally:
                with self._cond:
                    self._running = []

    def _take(self) -> list[Job]:
        """The next job and, for an image job, the waiting jobs that fit in its call (lock held)."""
        first = self._pending.pop(0)
        if not isinstance(first, ImageJob):
            return [first]
        batch, room = [first], self.settings.max_batch_images - first.n
        waiting = [job for job in self._pending if isinstance(job, ImageJob) and job.spec == first.spec]

        def fitting(wanted: Callable[[ImageJob], bool]) -> ImageJob | None:
            return next((job for job in waiting if job not in batch and job.n <= room and wanted(job)), None)

        base = first.seed
        while base is not None:  # seeded jobs whose seeds end where the run starts go before it
            job = fitting(lambda job: job.seed is not None and job.seed + job.n == base)
            if job is None:
                break
            batch.insert(0, job)
            base, room = job.seed, room - job.n
        if base is None:
            base = secrets.randbelow(2**31)
        next_seed = base + sum(job.n for job in batch)
        while True:  # then the jobs that continue the run, else unseeded ones (they take the next numbers)
            job = fitting(lambda job: job.seed == next_seed) or fitting(lambda job: job.seed is None)
            if job is None:
                break
            batch.append(job)
            next_seed, room = next_seed + job.n, room - job.n
        for job in batch:
            if job is not first:
                self._pending.remove(job)
        seed = base
        for job in batch:
            job.seeds, seed = list(range(seed, seed + job.n)), seed + job.n
        return batch

    def _run(self, jobs: list[Job]) -> None:
        start = time.perf_counter()
        try:
            if isinstance(jobs[0], ImageJob):
                self._run_images(jobs)
            else:
                self._run_chat(jobs[0])
        except _Abandoned:
            for job in jobs:
                job.emit({"type": "error", "error": ShuttingDown("the server is shutting down")}
                         if self._stopping else {"type": "error", "error": _Abandoned("the client left")})
        except Exception as err:  # noqa: BLE001 - any failure goes to the clients; the worker lives on
            if not isinstance(err, ValueError):
                log.exception("generation failed")
            self.stats.failed += len(jobs)
            for job in jobs:
                job.emit({"type": "error", "error": err})
        seconds = time.perf_counter() - start
        self.stats.batch_seconds = seconds if not self.stats.batch_seconds else (
            0.8 * self.stats.batch_seconds + 0.2 * seconds)

    def _progress(self, jobs: list[Job], tick: Callable[[int, int], None]) -> Callable[[int, int], None]:
        """The decode loop's progress callback: stop when abandoned, call `tick` at most every interval."""
        last = -math.inf

        def progress(done: int, total: int) -> None:
            nonlocal last
            if self._stopping or all(job.cancelled for job in jobs):
                raise _Abandoned()
            now = time.monotonic()
            if done == total or now - last >= self.settings.progress_interval:
                last = now
                tick(done, total)

        return progress

    def _run_images(self, jobs: list[ImageJob]) -> None:
        spec = jobs[0].spec
        prompts = [job.prompt for job in jobs for _ in range(job.n)]
        rows, start = {}, 0  # job -> its rows in the batch
        for job in jobs:
            rows[job], start = list(range(start, start + job.n)), start + job.n
        streamed = [job for job in jobs if job.stream]
        tap = TokenTap(self.m.lm.hidden, len(prompts)) if streamed else None
        h, w = grid_for_ratio(spec.ratio, self.m.image_area, self.m.vq.spatial_factor)
        previewed = {"rows": 0, "at": -math.inf}

        def tick(done: int, total: int) -> None:
            live = [job for job in streamed if not job.cancelled]
            for job in live:
                job.emit({"type": "progress", "done": done, "total": total, "grid": [h, w]})
            now = time.monotonic()
            if not live or now - previewed["at"] < self.settings.preview_interval:
                return
            ids = tap.ids()
            grids = [parse_image(ids[r], self.m.vocab) for job in live for r in rows[job]]
            if any(g is None or g.ndim != 2 for g in grids) or grids[0].shape[0] <= previewed["rows"]:
                return
            previewed.update(rows=grids[0].shape[0], at=now)
            images = iter(self.m.decode_codes(torch.stack(grids)))  # (B, rows, w) codes
            for job in live:
                for index in range(job.n):
                    job.emit({"type": "preview", "index": index, "rows": previewed["rows"], "grid": [h, w],
                              "b64_json": png_base64(next(images))})

        result = text_to_image(self.m, prompts, ratio=spec.ratio, cfg=spec.cfg, positive_prompt=spec.positive_prompt,
                               negative_prompt=spec.negative_prompt, sampling=spec.sampling, seed=jobs[0].seeds[0],
                               num_images=1, progress=self._progress(jobs, tick), step_fn=tap)
        self.stats.batches += 1
        self.stats.images += len(prompts)
        self.stats.batch_sizes[len(prompts)] = self.stats.batch_sizes.get(len(prompts), 0) + 1
        for job in jobs:
            mine = rows[job]
            job.emit({"type": "result", "outcome": ImageOutcome(
                [png_base64(result.images[r]) for r in mine], [result.seeds[r] for r in mine],
                result.images[mine[0]].size, len(prompts))})

    def _run_chat(self, job: ChatJob) -> None:
        tok = self.m.tokenizer
        tap = TokenTap(self.m.lm.hidden, 1) if job.stream else None
        m = dataclasses.replace(self.m, lm=TappedModel(self.m.lm, tap)) if tap else self.m
        turns = [Turn(text, [m.encode_image(im) for im in images], answer=answer)
                 for text, images, answer in job.history]
        deltas = TextDeltas()

        def tick(done: int, total: int) -> None:
            piece = deltas.update(tok.decode(tap.ids()[0]))
            if piece:
                job.emit({"type": "delta", "text": piece})

        result = Conversation(m, system=job.system, turns=turns).ask(
            job.text, job.images, max_new_tokens=job.max_new_tokens, sampling=job.sampling, seed=job.seed,
            progress=self._progress([job], tick if job.stream else lambda done, total: None))
        self.stats.chats += 1
        rest = deltas.finish(result.text) if job.stream else ""
        if rest:
            job.emit({"type": "delta", "text": rest})
        stopped = bool(result.token_ids) and result.token_ids[-1] == self.m.vocab.eos
        job.emit({"type": "result", "outcome": ChatOutcome(result.text, "stop" if stopped else "length",
                                                           len(result.token_ids))})

"""Which examples each process trains on at each step: a pure function of (seed, step).

An epoch is a seeded permutation of the (mixture-weighted) examples, cut into global batches of
`micro_batch_size * grad_accum * world_size` examples. With length bucketing, examples are sorted
by length inside windows of `bucket_window` global batches before the cut and the batches are then
shuffled, so a micro-batch holds sequences of similar length and little padding (bucketing instead
of packing keeps every sequence's attention exact and needs no block-diagonal masks). A global
batch is split into `world * grad_accum` micro-batches; process r takes micro-batches
`a * world + r`. The caption-dropout draws are part of the epoch plan. Because the plan depends
only on the seed and the step, resuming needs nothing but the step, and 1 or N processes see the
same global batches. This module reads no files and knows nothing of models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Layout:
    micro_batch_size: int
    grad_accum: int
    world_size: int

    @property
    def global_batch(self) -> int:
        return self.micro_batch_size * self.grad_accum * self.world_size


@dataclass(frozen=True)
class MicroBatch:
    """Example indices of one micro-batch and, per example, whether its caption is dropped."""

    step: int
    indices: tuple[int, ...]
    drop_prompt: tuple[bool, ...]


class Plan:
    """The deterministic data schedule over `lengths` (one entry per example)."""

    def __init__(self, lengths: np.ndarray, groups: list[np.ndarray], weights: list[float], layout: Layout, *,
                 seed: int, bucket_window: int, drop_prob: float) -> None:
        """`groups[d]` holds the example indices of mixture component d, sampled with `weights[d]` per epoch."""
        if len(groups) != len(weights) or any(w <= 0 for w in weights):
            raise ValueError(f"need one positive weight per dataset, got {weights}")
        self.lengths, self.groups, self.weights, self.layout = lengths, groups, weights, layout
        self.seed, self.bucket_window, self.drop_prob = seed, bucket_window, drop_prob
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        per_epoch = sum(int(w) * len(g) + round((w % 1) * len(g)) for g, w in zip(groups, weights, strict=True))
        self.steps_per_epoch = per_epoch // layout.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"an epoch holds {per_epoch} examples, fewer than one global batch of "
                             f"{layout.global_batch} (micro_batch_size x grad_accum x processes)")

    def epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(batches, drops): (steps_per_epoch, global_batch) example indices and caption-dropout flags."""
        if epoch not in self._cache:
            self._cache = {epoch: self._draw(epoch)}  # keep one epoch: steps come in order
        return self._cache[epoch]

    def _draw(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        parts = []
        for group, weight in zip(self.groups, self.weights, strict=True):
            whole, frac = int(weight), weight % 1
            parts += [group] * whole
            if frac:
                parts.append(rng.choice(group, size=round(frac * len(group)), replace=False))
        order = rng.permutation(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
        g = self.layout.global_batch
        if self.bucket_window:
            window = g * self.bucket_window
            chunks = []
            for start in range(0, len(order), window):
                part = order[start:start + window]
                chunks.append(part[np.argsort(-self.lengths[part], kind="stable")])
            order = np.concatenate(chunks)
        batches = order[: self.steps_per_epoch * g].reshape(self.steps_per_epoch, g)
        if self.bucket_window:
            batches = batches[rng.permutation(self.steps_per_epoch)]
        drops = rng.random(batches.shape) < self.drop_prob
        return batches, drops

    def step(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """The global batch (indices, drop flags) of optimizer step `step` (0-based)."""
        batches, drops = self.epoch(step // self.steps_per_epoch)
        return batches[step % self.steps_per_epoch], drops[step % self.steps_per_epoch]

    def micro_batches(self, step: int, rank: int) -> list[MicroBatch]:
        """This process' `grad_accum` micro-batches of step `step`."""
        indices, drops = self.step(step)
        lay, m = self.layout, self.layout.micro_batch_size
        out = []
        for a in range(lay.grad_accum):
            j = a * lay.world_size + rank
            out.append(MicroBatch(step, tuple(int(i) for i in indices[j * m:(j + 1) * m]),
                                  tuple(bool(d) for d in drops[j * m:(j + 1) * m])))
        return out

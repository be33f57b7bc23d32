"""Measure motion in generated Shapes video: `track_objects(frames)`, `compare_motion(frames, reference)`.

`track_objects` analyzes every frame (see `analyze`) and follows each (color, shape) through them:
its centre per frame, NaN where it is not seen (when a frame shows two objects of one kind, the one
nearest the last seen centre). `compare_motion` scores frames, typically a model's continuation
of a clip, against the reference centres of the same frames, e.g. `Video.tracks()` of the ground
truth sliced to the continued frames, or `track_objects` of ground-truth frames:

* `found`: fraction of (object, frame) pairs where the object is seen;
* `direction_accuracy`: fraction of the reference's moving steps (frame t to t+1, at least
  `MIN_STEP` long) that the generated object takes in the same direction (cosine similarity at least `SAME_DIRECTION`;
  a step where the object is not seen counts as wrong);
* `position_error`: mean distance between generated and reference centres over the pairs where
  the object is seen, in fractions of the picture side (NaN if it is never seen).

This module does not generate video and does not check captions of motion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from emu3.eval.shapes.analyze import analyze

SAME_DIRECTION = 0.7  # cosine similarity: within about 45 degrees
# Reference steps shorter than this (fractions of the side; about a pixel at 64x64) have no direction
# the analyzer can measure, e.g. a bounce that lands near where it started; they are not scored.
MIN_STEP = 0.02
_STILL = 1e-6


@dataclass(frozen=True)
class MotionScore:
    found: float
    direction_accuracy: float
    position_error: float
    n_objects: int


def track_objects(frames: Sequence) -> dict[tuple[str, str], np.ndarray]:
    """(color, shape) -> centres (n_frames, 2) as (x, y), NaN in frames where it is not seen."""
    analyses = [analyze(frame) for frame in frames]
    tracks: dict[tuple[str, str], np.ndarray] = {}
    for t, analysis in enumerate(analyses):
        for key in dict.fromkeys((o.color, o.shape) for o in analysis.objects):
            track = tracks.setdefault(key, np.full((len(frames), 2), np.nan))
            seen = track[:t][~np.isnan(track[:t, 0])]
            last = seen[-1] if len(seen) else None
            candidates = [np.array([o.x, o.y]) for o in analysis.objects if (o.color, o.shape) == key]
            track[t] = candidates[0] if last is None else min(candidates, key=lambda c: np.hypot(*(c - last)))
    return tracks


def compare_motion(frames: Sequence, reference: Mapping[tuple[str, str], np.ndarray]) -> MotionScore:
    """Score generated `frames` against `reference` centres ((color, shape) -> (n_frames, 2))."""
    if not reference:
        raise ValueError("the reference has no objects to compare with")
    generated = track_objects(frames)
    found, pairs_total, errors, steps_right, steps_total = 0, 0, [], 0, 0
    for key, ref in reference.items():
        ref = np.asarray(ref, dtype=float)
        if ref.shape != (len(frames), 2):
            raise ValueError(f"reference track of {key} has shape {ref.shape}; expected ({len(frames)}, 2) "
                             f"for {len(frames)} frames")
        gen = generated.get(key, np.full_like(ref, np.nan))
        seen = ~np.isnan(gen[:, 0])
        found += int(seen.sum())
        pairs_total += len(frames)
        errors += np.hypot(*(gen[seen] - ref[seen]).T).tolist()
        ref_steps, gen_steps = np.diff(ref, axis=0), np.diff(gen, axis=0)  # (T-1, 2)
        for r, g in zip(ref_steps, gen_steps):
            if np.hypot(*r) < MIN_STEP:
                continue
            steps_total += 1
            norm = np.hypot(*r) * np.hypot(*g)
            steps_right += bool(norm > _STILL ** 2 and np.dot(r, g) / norm >= SAME_DIRECTION)
    return MotionScore(found=found / pairs_total,
                       direction_accuracy=steps_right / steps_total if steps_total else math.nan,
                       position_error=float(np.mean(errors)) if errors else math.nan,
                       n_objects=len(reference))

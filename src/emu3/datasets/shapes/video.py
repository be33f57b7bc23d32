"""Short Shapes videos: objects moving in straight lines and bouncing off the picture's edges.

* `Video(background, movers, n_frames)`: each `Mover` is an object at frame 0 with a direction
  (one of `DIRECTIONS`: right, left, up, down and the four diagonals) and a speed in image sides
  per frame. `scenes()` gives the scene of every frame, `tracks()` the centre of every object in
  every frame, `caption()` says the motion: "a red circle moving right", "a blue square moving up
  and to the left, bouncing off the edge, and a green triangle moving down".
* `sample_video(rng, n_frames, split)`: one or two objects whose paths never overlap and that
  bounce, if at all, only in the second half (so the captioned direction dominates), from the
  chosen split of (color, shape) pairs. `n_frames` is a multiple of 4 because the vision
  tokenizer encodes video in groups of 4 frames.
* `render_video(video, size)`: the frames as PIL images.

Objects keep their size and shape; they do not collide with each other (paths that would are
never sampled). This module does not score motion (see `emu3.eval.shapes.motion`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from emu3.datasets.shapes.captions import mention_text
from emu3.datasets.shapes.description import Mention
from emu3.datasets.shapes.render import DEFAULT_IMAGE_SIZE, render
from emu3.datasets.shapes.scene import Obj, Scene
from emu3.datasets.shapes.split import check_split, pairs_held_out
from emu3.datasets.shapes.world import COLORS, SHAPES, SIZES, check_name

DEFAULT_FRAMES = 8
_D = math.sqrt(0.5)
# Direction name -> unit vector (x right, y down), and how a caption says it.
DIRECTIONS: dict[str, tuple[float, float]] = {
    "right": (1.0, 0.0), "left": (-1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0),
    "up and to the right": (_D, -_D), "up and to the left": (-_D, -_D),
    "down and to the right": (_D, _D), "down and to the left": (-_D, _D),
}
SPEED_RANGE = (0.04, 0.08)
_EDGE = 0.01  # objects turn back this far from the picture's edge
_GAP = 0.03
_MAX_DRAWS = 1000


@dataclass(frozen=True)
class Mover:
    """An object at frame 0, the direction it sets off in and its speed (image sides per frame)."""

    obj: Obj
    direction: str
    speed: float

    def __post_init__(self) -> None:
        check_name("direction", self.direction, tuple(DIRECTIONS))
        if not self.speed > 0:
            raise ValueError(f"speed must be positive, got {self.speed}")
        if not self.obj.inside(_EDGE):
            raise ValueError(f"a moving {self.obj.color} {self.obj.shape} must start at least {_EDGE} inside "
                             f"the picture, it starts at ({self.obj.x:.3f}, {self.obj.y:.3f})")

    def path(self, n_frames: int) -> tuple[np.ndarray, int | None]:
        """Centres (n_frames, 2) with reflections off the edges, and the first frame after a bounce."""
        lo = self.obj.side / 2 + _EDGE
        span = 1.0 - 2 * lo
        t = np.arange(n_frames)[:, None]  # (T, 1)
        free = np.array([self.obj.x, self.obj.y]) + t * self.speed * np.array(DIRECTIONS[self.direction])  # (T, 2)
        folded = np.mod(free - lo, 2 * span)  # unfold the straight path into a zig-zag between the edges
        folded = np.where(folded > span, 2 * span - folded, folded) + lo
        outside = np.flatnonzero(np.any((free < lo) | (free > lo + span), axis=1))
        return folded, int(outside[0]) if outside.size else None


@dataclass(frozen=True)
class Video:
    """Objects on a plain background, each moving in a straight line and bouncing off the edges."""

    background: str
    movers: tuple[Mover, ...]
    n_frames: int = DEFAULT_FRAMES

    def __post_init__(self) -> None:
        object.__setattr__(self, "movers", tuple(self.movers))
        kinds = [(m.obj.color, m.obj.shape) for m in self.movers]
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"moving objects must differ in color or shape (they are tracked by it), got {kinds}")
        if self.n_frames < 4 or self.n_frames % 4:
            raise ValueError(f"n_frames must be a positive multiple of 4 (the vision tokenizer encodes "
                             f"groups of 4 frames), got {self.n_frames}")

    def tracks(self) -> dict[tuple[str, str], np.ndarray]:
        """(color, shape) -> centres in every frame, (n_frames, 2) as (x, y)."""
        return {(m.obj.color, m.obj.shape): m.path(self.n_frames)[0] for m in self.movers}

    def scenes(self) -> list[Scene]:
        """The scene of every frame; raises ValueError if two objects would overlap."""
        paths = [m.path(self.n_frames)[0] for m in self.movers]
        return [Scene(self.background, tuple(Obj(m.obj.shape, m.obj.color, m.obj.size, *map(float, p[t]))
                                             for m, p in zip(self.movers, paths)))
                for t in range(self.n_frames)]

    def caption(self) -> str:
        parts = []
        for m in self.movers:
            part = f"{mention_text(Mention(m.obj.color, m.obj.shape))} moving {m.direction}"
            parts.append(part + (", bouncing off the edge," if m.path(self.n_frames)[1] is not None else ""))
        return " and ".join(parts).rstrip(",")


def render_video(video: Video, size: int = DEFAULT_IMAGE_SIZE) -> list[Image.Image]:
    """Every frame of the video as a size x size RGB image."""
    return [render(scene, size) for scene in video.scenes()]


def _apart_throughout(movers: list[Mover], n_frames: int) -> bool:
    """Whether every two objects' boxes stay _GAP apart in every frame."""
    paths = [m.path(n_frames)[0] for m in movers]
    for i in range(len(movers)):
        for j in range(i):
            need = (movers[i].obj.side + movers[j].obj.side) / 2 + _GAP
            if not np.all(np.any(np.abs(paths[i] - paths[j]) >= need, axis=1)):
                return False
    return True


def sample_video(rng: random.Random, n_frames: int = DEFAULT_FRAMES, split: str = "train",
                 max_objects: int = 2) -> Video:
    """One to `max_objects` objects of distinct (color, shape) moving without ever overlapping."""
    check_split(split)
    pairs = [(c, s) for c in COLORS for s in SHAPES]
    for _ in range(_MAX_DRAWS):
        chosen = rng.sample(pairs, rng.randint(1, max_objects))
        if pairs_held_out(chosen) != (split == "heldout"):
            continue
        background = rng.choice([c for c in COLORS if all(c != color for color, _ in chosen)])
        movers = []
        for color, shape in chosen:
            size = rng.choice(tuple(SIZES))
            low = SIZES[size] / 2 + _EDGE
            obj = Obj(shape, color, size, rng.uniform(low, 1 - low), rng.uniform(low, 1 - low))
            movers.append(Mover(obj, rng.choice(tuple(DIRECTIONS)), rng.uniform(*SPEED_RANGE)))
        # A bounce in the first half would make the captioned direction the minor one.
        early = any((b := m.path(n_frames)[1]) is not None and b < n_frames // 2 for m in movers)
        if not early and _apart_throughout(movers, n_frames):
            return Video(background, tuple(movers), n_frames)
    raise RuntimeError(f"drew {_MAX_DRAWS} videos without one whose objects never overlap and bounce late")

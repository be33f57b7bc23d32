"""Read a picture of the Shapes world back into objects: `analyze(image) -> Analysis`.

1. Every pixel takes the nearest palette color (Euclidean in RGB).
2. The background is the most frequent color.
3. 4-connected blobs of one non-background color are candidate objects. A blob counts only if
   some of it survives erosion by a square of side 2r+1, r = max(1, round(side / 64)) (an opening
   by reconstruction): noise specks and the thin rings of in-between colors that blur leaves
   around edges (red on yellow blurs to orange) disappear, while objects keep every pixel, thin
   triangle tips included. Blobs under `MIN_BLOB_AREA` of the picture are dropped too.
4. Each object's shape is the world shape (`world.shape_mask`) that overlaps it best when scaled
   to its area and placed on its centroid (see `fit_shape`). The fitted shape's box gives the
   object's size (`world.size_of` of the box side) and position (the box centre, which is where
   the renderer puts an object; a triangle's centroid sits lower).

The result has the fields that claims are checked against (`background`, `objects` with `color`,
`shape`, `size`, `x`, `y`), so `claim.holds(analyze(image))` scores a picture. Deterministic;
pure numpy; square pictures of any side from 32 pixels (below that the erosion removes small
triangles and circles fit as squares: rendered ground truth fails 49 of 300 prompts at 24 pixels,
none at 32 or more). Objects of one color that touch merge
into one. This module does not know about captions or models, and reads one picture at a time.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from emu3.datasets.shapes.world import COLORS, PALETTE, SHAPES, shape_mask, size_of

MIN_SIDE = 32
MIN_BLOB_AREA = 0.005  # a quarter of the smallest object (a small triangle covers 0.02 of the picture)
_RGB = np.array([PALETTE[c] for c in COLORS], dtype=np.float32)  # (K, 3)


@dataclass(frozen=True)
class Detected:
    """An object found in a picture; x, y (box centre), side and area are fractions of the picture."""

    color: str
    shape: str
    size: str
    x: float
    y: float
    side: float
    area: float
    fit: float  # intersection over union of the object and the fitted shape, 0..1


@dataclass(frozen=True)
class Analysis:
    background: str
    objects: tuple[Detected, ...]


def _pixels(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected a PIL image or an (H, W, 3) RGB array, got an array of shape {array.shape}")
    return array.astype(np.float32)


def palette_labels(image) -> np.ndarray:
    """(H, W) index into `COLORS` of every pixel's nearest palette color."""
    pixels = _pixels(image)  # (H, W, 3)
    distances = ((pixels[:, :, None, :] - _RGB) ** 2).sum(-1)  # (H, W, K)
    return distances.argmin(-1)


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    k = 2 * r + 1
    return sliding_window_view(np.pad(mask, r, mode="edge"), (k, k)).all(axis=(-2, -1))


def _components(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Blob id of every kept pixel (4-connected, same label); h*w elsewhere. Min-id propagation."""
    h, w = labels.shape
    none = h * w
    ids = np.where(keep, np.arange(h * w).reshape(h, w), none)
    down = keep[1:] & keep[:-1] & (labels[1:] == labels[:-1])  # (H-1, W): pixel joined to the one below
    right = keep[:, 1:] & keep[:, :-1] & (labels[:, 1:] == labels[:, :-1])  # (H, W-1)
    while True:
        new = ids.copy()
        new[1:] = np.minimum(new[1:], np.where(down, new[:-1], none))
        new[:-1] = np.minimum(new[:-1], np.where(down, new[1:], none))
        new[:, 1:] = np.minimum(new[:, 1:], np.where(right, new[:, :-1], none))
        new[:, :-1] = np.minimum(new[:, :-1], np.where(right, new[:, 1:], none))
        if np.array_equal(new, ids):
            return ids
        ids = new


@functools.cache
def _template(shape: str) -> tuple[float, float, float]:
    """A shape's fill of its box and its centroid (u, v) in box coordinates, from a fine raster."""
    t = (np.arange(256) + 0.5) / 128 - 1
    mask = shape_mask(shape, t[None, :], t[:, None])  # (256, 256)
    u, v = np.broadcast_arrays(t[None, :], t[:, None])
    return float(mask.mean()), float(u[mask].mean()), float(v[mask].mean())


def fit_shape(ys: np.ndarray, xs: np.ndarray, h: int, w: int) -> tuple[str, float, float, float, float]:
    """Fit every world shape to a blob (pixel rows `ys`, columns `xs` of an h x w picture) and keep the
    best: (shape, overlap as intersection over union, box centre x, box centre y, box side), lengths
    in pixels.

    Each shape's mask is scaled to the blob's area and placed on the blob's centroid, so the fit
    rests on integrals (area, mean) that ragged, blurred or noisy edges barely move, not on extreme
    pixels.
    """
    area = ys.size
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    best = ("", -1.0, 0.0, 0.0, 0.0)
    for shape in SHAPES:
        fill, cu, cv = _template(shape)
        side = math.sqrt(area / fill)
        bx, by = cx - cu * side / 2, cy - cv * side / 2
        x0, x1 = max(0, min(int(bx - side / 2), xs.min())), min(w, max(math.ceil(bx + side / 2), xs.max() + 1))
        y0, y1 = max(0, min(int(by - side / 2), ys.min())), min(h, max(math.ceil(by + side / 2), ys.max() + 1))
        u = ((np.arange(x0, x1) + 0.5 - bx) / (side / 2))[None, :]  # (1, W')
        v = ((np.arange(y0, y1) + 0.5 - by) / (side / 2))[:, None]  # (H', 1)
        template = np.broadcast_to(shape_mask(shape, u, v), (y1 - y0, x1 - x0))
        blob = np.zeros_like(template)
        blob[ys - y0, xs - x0] = True
        iou = float((blob & template).sum() / (blob | template).sum())
        if iou > best[1]:
            best = (shape, iou, bx, by, side)
    return best


def analyze(image) -> Analysis:
    """The background color and the objects of a picture (PIL image or (H, W, 3) array, 0..255)."""
    labels = palette_labels(image)
    h, w = labels.shape
    if h != w or w < MIN_SIDE:
        raise ValueError(f"ShapesEval reads square pictures of at least {MIN_SIDE}x{MIN_SIDE} pixels, got {w}x{h}")
    background = int(np.bincount(labels.ravel(), minlength=len(COLORS)).argmax())
    r = max(1, round(min(h, w) / 64))
    core = np.zeros((h, w), dtype=bool)
    for k in np.unique(labels):
        if k != background:
            core |= _erode(labels == k, r)
    ids = _components(labels, labels != background)
    sizes = np.bincount(ids.ravel(), minlength=h * w + 1)
    blobs = [int(b) for b in np.unique(ids[core]) if sizes[b] >= MIN_BLOB_AREA * h * w]
    objects = []
    for blob in blobs:
        color = COLORS[labels.flat[blob]]  # a blob's id is the flat index of one of its pixels
        ys, xs = np.nonzero(ids == blob)
        shape, fit, x, y, side = fit_shape(ys, xs, h, w)
        objects.append(Detected(color, shape, size_of(side / w), float(x / w), float(y / w), float(side / w),
                                float(ys.size / (w * w)), fit))
    return Analysis(COLORS[background], tuple(objects))

"""k-means for initialising a VQ codebook from encoder latents: `kmeans(points, k, iters, generator)`.

Lloyd's algorithm on (N, D) points, started from k distinct random points; a centre that loses all
its points is moved onto a random point. Deterministic given the generator. Pure torch, on the
points' device; memory is one (chunk, k) distance block at a time.
"""

from __future__ import annotations

import torch

_CHUNK = 8192


def assign(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centre for each point, (N,)."""
    return torch.cat([torch.cdist(chunk, centres).argmin(1) for chunk in points.split(_CHUNK)])


def kmeans(points: torch.Tensor, k: int, iters: int = 20, generator: torch.Generator | None = None) -> torch.Tensor:
    """(k, D) centres of `points` (N, D) after `iters` Lloyd iterations."""
    if points.ndim != 2 or len(points) < k:
        raise ValueError(f"k-means needs at least k={k} points in an (N, D) tensor, got shape {tuple(points.shape)}")
    points = points.float()
    pick = lambda n: torch.randperm(len(points), generator=generator)[:n].to(points.device)  # noqa: E731
    centres = points[pick(k)].clone()
    for _ in range(iters):
        nearest = assign(points, centres)
        sums = torch.zeros_like(centres).index_add_(0, nearest, points)
        counts = torch.bincount(nearest, minlength=k).to(points.dtype)
        empty = counts == 0
        centres = torch.where(empty[:, None], centres, sums / counts.clamp_min(1)[:, None])
        if empty.any():
            centres[empty] = points[pick(int(empty.sum()))]
    return centres

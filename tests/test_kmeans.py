"""k-means for codebook initialisation: finds well-separated clusters, keeps every centre alive, is seeded."""

import pytest
import torch

from emu3.train.kmeans import assign, kmeans


def test_kmeans_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    truth = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(50, 2, generator=g) for c in truth])
    found = kmeans(points, 4, generator=torch.Generator().manual_seed(1))
    assert torch.cdist(truth, found).min(1).values.max() < 0.1
    assert sorted(torch.bincount(assign(points, found)).tolist()) == [50, 50, 50, 50]


def test_kmeans_is_seeded_and_keeps_centres_on_points_when_clusters_empty():
    points = torch.tensor([[0.0], [0.0], [0.0], [1.0]])  # 4 points, 3 centres, duplicates leave one empty
    a = kmeans(points, 3, generator=torch.Generator().manual_seed(3))
    b = kmeans(points, 3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert all(any(torch.equal(c, p) for p in points) for c in a)


def test_kmeans_needs_enough_points():
    with pytest.raises(ValueError, match="at least k=5"):
        kmeans(torch.zeros(3, 2), 5)

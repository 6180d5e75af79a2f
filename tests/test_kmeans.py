"""k-means backends recover well-separated clusters; the torch fallback is deterministic."""

import pytest
import torch

from ddcore.kmeans import kmeans


def blobs(k=4, per=30, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=g) * 10
    points = centres.repeat_interleave(per, 0) + torch.randn(k * per, dim, generator=g) * 0.1
    return points, centres


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_recovers_separated_clusters(backend):
    points, centres = blobs()
    found, assignment = kmeans(points, 4, seed=0, backend=backend)
    nearest = torch.cdist(found, centres).min(dim=1).values
    assert nearest.max() < 0.5
    assert len(set(assignment.tolist())) == 4


def test_torch_backend_is_deterministic_and_k_checked():
    points, _ = blobs()
    a, _ = kmeans(points, 4, seed=3, backend="torch")
    b, _ = kmeans(points, 4, seed=3, backend="torch")
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="at least 200"):
        kmeans(points, 200, seed=0)

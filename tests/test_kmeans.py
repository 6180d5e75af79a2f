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


class ClaimsCuda(torch.Tensor):
    """A CPU tensor that says it is on CUDA, as a rank's latents on its own GPU would."""

    @property
    def is_cuda(self):
        return True


def test_faiss_kmeans_of_gpu_latents_never_asks_faiss_for_gpus(monkeypatch):
    """faiss's gpu=True means every visible GPU: under 8 DDP ranks, 8 contexts per rank."""
    import numpy as np

    import ddcore.kmeans as km

    calls = []

    class Kmeans:  # records its arguments; "trains" by taking evenly spaced rows
        def __init__(self, d, k, **kwargs):
            calls.append(kwargs)
            self.k = k

        def train(self, x):
            assert isinstance(x, np.ndarray)
            self.centroids = x[:: len(x) // self.k][: self.k].copy()

    faiss_with_gpus = type("faiss", (), {"Kmeans": Kmeans, "StandardGpuResources": object})
    monkeypatch.setattr(km, "_faiss", lambda: faiss_with_gpus)
    points, _ = blobs()
    centroids, assignment = kmeans(points.as_subclass(ClaimsCuda), 4, seed=0)
    assert len(calls) == 1 and calls[0].get("gpu", False) in (False, 0)
    assert centroids.shape == (4, 8) and assignment.shape == (120,)


def test_kmeans_backend_names_the_backend_that_runs(monkeypatch):
    import ddcore.kmeans as km

    monkeypatch.setattr(km, "_faiss", lambda: None)
    assert km.kmeans_backend("auto") == km.kmeans_backend("torch") == "torch"
    with pytest.raises(ImportError, match="faiss is not installed"):
        km.kmeans_backend("faiss")
    monkeypatch.setattr(km, "_faiss", lambda: object())
    assert km.kmeans_backend("auto") == km.kmeans_backend("faiss") == "faiss-cpu"
    assert km.kmeans_backend("torch") == "torch"
    with pytest.raises(ValueError, match="unknown kmeans backend 'gpu'"):
        km.kmeans_backend("gpu")

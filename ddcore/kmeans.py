"""k-means: faiss when installed (GPU index when the data is on a GPU), a torch fallback otherwise."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def kmeans(x: torch.Tensor, k: int, *, seed: int, iterations: int = 50,
           backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster rows of ``x`` (n, d) into k clusters -> (centroids (k, d), assignment (n,)).

    ``backend``: ``auto`` (faiss if installed, else torch), ``faiss`` or ``torch``.
    """
    if k > len(x):
        raise ValueError(f"k-means with k={k} needs at least {k} points, got {len(x)}")
    x = x.float().flatten(1)
    faiss = _faiss() if backend in ("auto", "faiss") else None
    if backend == "faiss" and faiss is None:
        raise ImportError("kmeans backend 'faiss' requested but faiss is not installed "
                          "(pip install faiss-cpu, or faiss-gpu-cu12 on GPU machines)")
    if faiss is not None:
        centroids = _faiss_kmeans(faiss, x, k, seed, iterations)
    else:
        centroids = _torch_kmeans(x, k, seed, iterations)
    return centroids, assign(x, centroids)


def assign(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x.float().flatten(1), centroids.to(x.device)).argmin(dim=1)


def _faiss_kmeans(faiss, x: torch.Tensor, k: int, seed: int, iterations: int) -> torch.Tensor:
    use_gpu = x.is_cuda and hasattr(faiss, "StandardGpuResources")
    km = faiss.Kmeans(x.shape[1], k, niter=iterations, seed=seed % (2**31), gpu=use_gpu,
                      min_points_per_centroid=1, max_points_per_centroid=100000, verbose=False)
    km.train(x.detach().cpu().numpy())
    return torch.from_numpy(km.centroids).to(x.device)


def _torch_kmeans(x: torch.Tensor, k: int, seed: int, iterations: int) -> torch.Tensor:
    """Lloyd's algorithm with k-means++ seeding from an explicit generator."""
    g = torch.Generator().manual_seed(seed)
    centroids = x[torch.randint(len(x), (1,), generator=g).to(x.device)]
    for _ in range(1, k):
        d2 = torch.cdist(x, centroids).min(dim=1).values.pow(2).cpu()
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1 / len(d2))
        centroids = torch.cat([centroids, x[torch.multinomial(probs, 1, generator=g).to(x.device)]])
    for _ in range(iterations):
        labels = assign(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).unsqueeze(1)
        updated = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        if torch.allclose(updated, centroids):
            break
        centroids = updated
    return centroids

"""Clustering for mode discovery and selection baselines.

k-means: faiss when installed, a torch fallback otherwise, both always on the CPU (the backend
that runs, ``kmeans_backend``, is ``faiss-cpu`` or ``torch``; resume fingerprints record it).
Never on a GPU: faiss's ``gpu=True`` means every visible GPU, so under 8 DDP ranks each rank
would open contexts on all 8 devices for every class, and one class is small work. Measured on
this project's shared 2-core CPU machine, one class at DiT-XL/2 latent size (n = 1300 points,
d = 4096, 50 iterations), seconds: with one thread (torchrun's default OMP_NUM_THREADS=1)
faiss-cpu 0.1-0.4 (k = 10) and 0.1-0.5 (k = 50), torch 0.3-1.1 (k = 10) and 1.0-3.2
(k = 50), the spread being other jobs on the cores; two threads on the busy cores were no
faster. Centroids and assignments come back on the input's device.
Also: the distinct real point closest to each centroid, and DBSCAN cluster means.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)
BACKENDS = ("auto", "faiss", "torch")


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def kmeans_backend(backend: str = "auto") -> str:
    """The backend ``kmeans(..., backend=backend)`` runs: ``faiss-cpu`` or ``torch``.

    ``backend``: ``auto`` (faiss if installed, else torch), ``faiss`` or ``torch``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown kmeans backend {backend!r} (use one of: {', '.join(BACKENDS)})")
    if backend == "torch" or (backend == "auto" and _faiss() is None):
        return "torch"
    if _faiss() is None:
        raise ImportError(
            "kmeans backend 'faiss' requested but faiss is not installed "
            "(pip install faiss-cpu, or faiss-gpu-cu12 on GPU machines)"
        )
    return "faiss-cpu"


def kmeans(
    x: torch.Tensor, k: int, *, seed: int, iterations: int = 50, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster rows of ``x`` (n, d) into k clusters -> (centroids (k, d), assignment (n,)),
    computed on the CPU by ``kmeans_backend(backend)``, returned on ``x``'s device."""
    if k > len(x):
        raise ValueError(f"k-means with k={k} needs at least {k} points, got {len(x)}")
    points = x.detach().float().flatten(1).cpu()
    if kmeans_backend(backend) == "faiss-cpu":
        centroids = _faiss_kmeans(_faiss(), points, k, seed, iterations)
    else:
        centroids = _torch_kmeans(points, k, seed, iterations)
    return centroids.to(x.device), assign(points, centroids).to(x.device)


def assign(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x.float().flatten(1), centroids.to(x.device)).argmin(dim=1)


def closest_points(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of a distinct point of ``x`` (n, d) for each centroid (k, d), k <= n.

    Greedy over the closest remaining (centroid, point) pair, so two centroids never share a
    point (a real image appears once in a distilled set) and ties resolve the same way each run.
    """
    dist = torch.cdist(centroids.float().flatten(1), x.float().flatten(1).to(centroids.device))
    chosen = torch.full((len(centroids),), -1, dtype=torch.long)
    for _ in range(len(centroids)):
        flat = int(dist.argmin())
        c, i = divmod(flat, dist.shape[1])
        chosen[c] = i
        dist[c, :] = float("inf")
        dist[:, i] = float("inf")
    return chosen


def dbscan_means(
    x: torch.Tensor,
    k: int,
    *,
    seed: int,
    eps: float | None = None,
    min_samples: int = 5,
    iterations: int = 50,
    backend: str = "auto",
) -> torch.Tensor:
    """Means of the k largest DBSCAN clusters of the rows of ``x`` -> (k, d).

    ``eps`` None picks the median radius that holds ``min_samples`` points around a point
    (``knn_radius``), so about half of the points are core points whatever the latent scale. When
    DBSCAN finds fewer than k clusters, the missing means are k-means centroids of the points
    outside the clusters (its noise points; all points if there are too few of them), so that
    every sample still gets its own mode.
    """
    from sklearn.cluster import DBSCAN

    if k > len(x):
        raise ValueError(f"DBSCAN modes with k={k} need at least {k} points, got {len(x)}")
    x = x.float().flatten(1)
    eps = float(eps) if eps is not None else knn_radius(x, min_samples)
    labels = torch.from_numpy(DBSCAN(eps=eps, min_samples=min_samples).fit(x.cpu().numpy()).labels_).to(
        x.device
    )
    ids, counts = torch.unique(labels[labels >= 0], return_counts=True)
    largest = ids[torch.argsort(-counts, stable=True)][:k]
    means = [x[labels == c].mean(dim=0) for c in largest.tolist()]
    if len(means) < k:
        rest = x[~torch.isin(labels, largest)]
        pool = rest if len(rest) >= k - len(means) else x
        log.info(
            f"DBSCAN (eps={eps:.3g}) found {len(means)} clusters for k={k}; "
            f"{k - len(means)} modes from k-means of {len(pool)} remaining points"
        )
        fill, _ = kmeans(pool, k - len(means), seed=seed, iterations=iterations, backend=backend)
        means.extend(fill)
    return torch.stack(means)


def knn_radius(x: torch.Tensor, neighbours: int) -> float:
    """Median distance from a point to the farthest of its ``neighbours`` nearest points (itself
    included, as DBSCAN's ``min_samples`` counts it): half the points are core points."""
    if len(x) < 2:
        return 1.0
    nth = max(1, min(neighbours - 1, len(x) - 1))
    return float(torch.cdist(x, x).sort(dim=1).values[:, nth].median())


def _faiss_kmeans(faiss, x: torch.Tensor, k: int, seed: int, iterations: int) -> torch.Tensor:
    """faiss's CPU k-means of CPU rows ``x`` (no ``gpu`` argument: see the module docstring)."""
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=iterations,
        seed=seed % (2**31),
        min_points_per_centroid=1,
        max_points_per_centroid=100000,
        verbose=False,
    )
    km.train(x.numpy())
    return torch.from_numpy(km.centroids)


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

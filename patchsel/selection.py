"""Stage II choice of patches within a class (docs/patchsel.md).

Patches are clustered (k-means, M = 32, on their features); clusters are ranked by the median
relevance of their patches (higher first: see ``patchsel/relevance.py`` for the sign); inside a
cluster patches are ranked by distance to the centroid (closest first). The top N = 10 clusters
each give ``need // N`` patches (``need`` = 4 * IPC when tiling, else IPC); clusters with too few
patches, and the remainder of the division, are filled by the best remaining patches by
relevance. Without clustering (ablation) the ``need`` most relevant patches are taken.
"""

from __future__ import annotations

import torch

from ddcore.kmeans import kmeans


def by_relevance(relevance: torch.Tensor, need: int, exclude: set[int] = frozenset()) -> list[int]:
    order = torch.argsort(relevance, descending=True, stable=True).tolist()
    return [i for i in order if i not in exclude][:need]


def ranked_clusters(
    features: torch.Tensor, relevance: torch.Tensor, clusters: int, seed: int, backend: str = "auto"
) -> list[list[int]]:
    """Members of each non-empty cluster, closest to the centroid first; clusters by median
    relevance, highest first (ties: the lower cluster index)."""
    centroids, assignment = kmeans(features, clusters, seed=seed, backend=backend)
    centroids, assignment = centroids.cpu(), assignment.cpu()
    distance = (features.float().cpu() - centroids[assignment]).pow(2).sum(1)
    groups = []
    for k in range(len(centroids)):
        members = torch.nonzero(assignment == k).flatten()
        if len(members) == 0:
            continue
        inside = members[torch.argsort(distance[members], stable=True)].tolist()
        groups.append((-float(relevance[members].median()), k, inside))
    return [inside for _, _, inside in sorted(groups)]


def choose_patches(
    features: torch.Tensor,
    relevance: torch.Tensor,
    need: int,
    *,
    clusters: int = 32,
    top_clusters: int = 10,
    seed: int = 0,
    clustering: bool = True,
    backend: str = "auto",
) -> list[int]:
    """Indices of the ``need`` patches of a class, in the order they become images."""
    if need > len(relevance):
        raise ValueError(f"{need} patches asked of {len(relevance)}")
    if not clustering:
        return by_relevance(relevance, need)
    quota = need // top_clusters
    chosen: list[int] = []
    if quota:
        for members in ranked_clusters(features, relevance, clusters, seed, backend)[:top_clusters]:
            chosen += members[:quota]
    return chosen + by_relevance(relevance, need - len(chosen), exclude=set(chosen))

"""Hierarchical clustering into k clusters (ManifoldGD's IPC centres; usable as MGD^3 modes).

- ``agglomerative``: bottom-up merging with ``ward`` / ``average`` / ``complete`` / ``single``
  linkage in Euclidean space (scikit-learn; deterministic, no seed).
- ``divisive``: bisecting k-means. Start from one cluster holding every point and split the
  cluster with the largest score in two (k-means with k = 2) until k leaves exist. Score
  ``sse``: the sum of squared distances to the cluster mean; ``var``: that sum per entry
  (SSE / (size * dim)).
- ``divisive_levels``: the same bisecting tree, with the k leaves taken level by level
  (``pick_by_levels``): one random leaf from each depth starting at ``level`` (1 = the root),
  then the rest from the deepest level up.

Every function takes an explicit seed and returns the same clusters for the same seed.

Deviations from the public ManifoldGD code (``sample_new.py``):

- The 2-means splits reuse ``ddcore.kmeans.kmeans`` (faiss or torch, one seeded start) instead
  of scikit-learn's ``KMeans(n_init=10)``; splits of well-separated data are the same.
- ``var`` is SSE / (size * dim), the mean squared distance to the cluster mean per entry; the
  public code's ``np.var`` of the cluster's matrix also counts the spread of the mean's own
  entries around their average.
- ``level`` is counted from the root (1 = the root), as the public code computes it; its help
  text says "i-th from the last level". The public tree has exactly k leaves, so its level
  rule only orders the k centres (which sample is guided to which); ``tree_leaves`` > k grows
  the tree further so that the level chooses among leaves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ddcore.kmeans import kmeans
from ddcore.seeding import derive_seed

LINKAGES = ("ward", "average", "complete", "single")
CRITERIA = ("sse", "var")


def agglomerative_clusters(x: torch.Tensor, k: int, linkage: str = "ward") -> list[np.ndarray]:
    """Row indices of each of the k agglomerative clusters of ``x`` (n, d), by label order."""
    from sklearn.cluster import AgglomerativeClustering

    labels = AgglomerativeClustering(n_clusters=k, linkage=linkage).fit_predict(
        x.detach().cpu().double().numpy()
    )
    return [np.flatnonzero(labels == c) for c in range(k)]


@dataclass
class Node:
    """One cluster of the bisecting tree: its row indices, depth (root 0) and children."""

    idx: np.ndarray
    depth: int
    children: list["Node"] = field(default_factory=list)


def split_score(x: torch.Tensor, idx: np.ndarray, criterion: str) -> float:
    if len(idx) < 2:
        return 0.0  # a single point cannot be split
    part = x[torch.from_numpy(idx).to(x.device)]
    sse = float((part - part.mean(dim=0)).pow(2).sum())
    return sse if criterion == "sse" else sse / part.numel()


def bisect(x: torch.Tensor, idx: np.ndarray, seed: int, backend: str) -> tuple[np.ndarray, ...]:
    """Split ``idx`` in two by 2-means; a split with an empty side falls back to halves of a
    seeded permutation (e.g. when every point of the cluster is the same)."""
    _, labels = kmeans(x[torch.from_numpy(idx).to(x.device)], 2, seed=seed % (2**31), backend=backend)
    side = labels.cpu().numpy()
    left, right = idx[side == 0], idx[side == 1]
    if len(left) == 0 or len(right) == 0:
        order = idx[np.random.default_rng(seed % (2**32)).permutation(len(idx))]
        left, right = order[: len(idx) // 2], order[len(idx) // 2 :]
    return left, right


def bisecting_tree(
    x: torch.Tensor, k: int, *, seed: int, criterion: str = "sse", backend: str = "auto"
) -> tuple[Node, list[Node]]:
    """Grow the bisecting k-means tree of ``x`` (n, d) to k leaves -> (root, leaves).

    Leaves are kept in creation order (a split appends its two children at the end), as the
    public ManifoldGD code keeps them; ties in the score go to the earliest leaf.
    """
    x = x.float().flatten(1)
    root = Node(np.arange(len(x)), 0)
    leaves = [root]
    for split in range(k - 1):
        scores = [split_score(x, leaf.idx, criterion) for leaf in leaves]
        splittable = [i for i, leaf in enumerate(leaves) if len(leaf.idx) >= 2]
        if not splittable:
            break  # fewer than k points: the caller checks n >= k
        parent = leaves.pop(max(splittable, key=lambda i: (scores[i], -i)))
        left, right = bisect(x, parent.idx, derive_seed(seed, "bisect", split), backend)
        parent.children = [Node(left, parent.depth + 1), Node(right, parent.depth + 1)]
        leaves.extend(parent.children)
    return root, leaves


def pick_by_levels(leaves: list[Node], k: int, level: int, seed: int) -> list[Node]:
    """k leaves, level by level (the public code's rule; ``level`` 1 = the root's depth):

    1. walk the depths from ``level - 1`` down to the deepest and take one random unused leaf
       of each depth that has one;
    2. fill the rest from the deepest depth upward, in random order within a depth.
    """
    rng = np.random.default_rng(seed % (2**32))
    by_depth: dict[int, list[Node]] = {}
    for leaf in leaves:
        by_depth.setdefault(leaf.depth, []).append(leaf)
    deepest = max(by_depth)
    picked: list[Node] = []
    for depth in range(min(max(0, level - 1), deepest), deepest + 1):
        if depth in by_depth and len(picked) < k:
            picked.append(by_depth[depth][rng.integers(len(by_depth[depth]))])
    for depth in range(deepest, -1, -1):
        pool = [leaf for leaf in by_depth.get(depth, []) if all(leaf is not p for p in picked)]
        for i in rng.permutation(len(pool)):
            if len(picked) < k:
                picked.append(pool[i])
    return picked


def representatives(x: torch.Tensor, clusters: list[np.ndarray], closest: bool) -> torch.Tensor:
    """The mean of each cluster, or (``closest``) the cluster's member closest to its mean.

    Clusters are disjoint, so closest members are distinct real points.
    """
    x = x.float().flatten(1)
    reps = []
    for idx in clusters:
        part = x[torch.from_numpy(idx).to(x.device)]
        mean = part.mean(dim=0)
        reps.append(part[(part - mean).norm(dim=1).argmin()] if closest else mean)
    return torch.stack(reps)


def hierarchical_centres(
    x: torch.Tensor,
    k: int,
    method: str,
    *,
    seed: int,
    linkage: str = "ward",
    criterion: str = "sse",
    level: int = 2,
    tree_leaves: int | None = None,
    closest: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """k centres of the rows of ``x`` (n, d) by ``agglomerative`` / ``divisive`` /
    ``divisive_levels`` clustering -> (k, d).

    ``tree_leaves`` (divisive_levels only): grow the tree to this many leaves (>= k) before
    picking k of them; None = k, as the public code does (its level rule then only orders the
    k leaves, i.e. which sample gets which centre).
    """
    if k > len(x):
        raise ValueError(f"{method} clustering with k={k} needs at least {k} points, got {len(x)}")
    x = x.float().flatten(1)
    if method == "agglomerative":
        clusters = agglomerative_clusters(x, k, linkage)
    else:
        grow = k if method == "divisive" else min(len(x), max(k, tree_leaves or k))
        _, leaves = bisecting_tree(x, grow, seed=seed, criterion=criterion, backend=backend)
        if method == "divisive_levels":
            leaves = pick_by_levels(leaves, k, level, derive_seed(seed, "levels"))
        clusters = [leaf.idx for leaf in leaves]
    return representatives(x, clusters, closest)

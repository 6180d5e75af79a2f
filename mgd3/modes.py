"""Mode discovery (MGD^3 stage 1): k = IPC modes per class in the generator's latent space.

Options (``method.mode_discovery``; docs/mgd3.md ablation, ImageNette IPC 10, in brackets):

- ``kmeans`` (default [66.4]): k-means centroids of the class's latents.
- ``closest_real`` [64.6]: the real latent closest to each k-means centroid (distinct).
- ``random_real`` [59.6]: k random real latents.
- ``dbscan`` [61.3]: means of the k largest DBSCAN clusters, topped up with k-means centroids
  of the remaining points when DBSCAN finds fewer than k (``ddcore.kmeans.dbscan_means``).
- ``agglomerative`` / ``divisive`` / ``divisive_levels``: ManifoldGD's hierarchical IPC centres
  (``ddcore.hierarchical``; settings ``linkage``, ``criterion``, ``level``, ``tree_leaves``),
  the cluster means or, with ``representative=closest_real``, each cluster's closest member.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ddcore.data.base import ImageClassificationData
from ddcore.errors import UserError
from ddcore.generators.base import DiffusionGenerator
from ddcore.hierarchical import CRITERIA, LINKAGES, hierarchical_centres
from ddcore.kmeans import closest_points, dbscan_means, kmeans
from ddcore.latent_cache import LatentCache
from ddcore.seeding import derive_seed

HIERARCHICAL = ("agglomerative", "divisive", "divisive_levels")
MODE_DISCOVERY = ("kmeans", "closest_real", "random_real", "dbscan", *HIERARCHICAL)
REPRESENTATIVES = ("centroid", "closest_real")


@dataclass
class ModeDiscovery:
    """How modes are found from a class's latents (n, C, H, W) -> (k, C, H, W)."""

    method: str = "kmeans"
    backend: str = "auto"  # k-means: auto (faiss if installed) | faiss | torch
    iterations: int = 50
    dbscan_eps: float | None = None  # None: the median min_samples-neighbour radius
    dbscan_min_samples: int = 5
    linkage: str = "ward"  # agglomerative: ward | average | complete | single
    criterion: str = "sse"  # divisive: split the leaf with the largest sse | var
    level: int = 2  # divisive_levels: first depth picked (1 = the root)
    tree_leaves: int | None = None  # divisive_levels: leaves grown (None: k)
    representative: str = "centroid"  # hierarchical: centroid | closest_real

    def __post_init__(self):
        for key, value, options in (
            ("mode_discovery", self.method, MODE_DISCOVERY),
            ("linkage", self.linkage, LINKAGES),
            ("divisive_criterion", self.criterion, CRITERIA),
            ("centres", self.representative, REPRESENTATIVES),
        ):
            if value not in options:
                raise UserError(f"unknown method.{key} {value!r} (use one of: {', '.join(options)})")
        if self.level < 1:
            raise UserError(f"method.divisive_level must be >= 1 (1 = the root), got {self.level}")

    def __call__(self, latents: torch.Tensor, k: int, seed: int) -> torch.Tensor:
        flat = latents.flatten(1).float()
        if self.method == "random_real":
            pick = torch.randperm(len(flat), generator=torch.Generator().manual_seed(seed))[:k]
            modes = flat[pick.to(flat.device)]
        elif self.method == "dbscan":
            modes = dbscan_means(
                flat,
                k,
                seed=seed,
                eps=self.dbscan_eps,
                min_samples=self.dbscan_min_samples,
                iterations=self.iterations,
                backend=self.backend,
            )
        elif self.method in HIERARCHICAL:
            modes = hierarchical_centres(
                flat,
                k,
                self.method,
                seed=seed,
                linkage=self.linkage,
                criterion=self.criterion,
                level=self.level,
                tree_leaves=self.tree_leaves,
                backend=self.backend,
                closest=self.representative == "closest_real",
            )
        else:
            modes, _ = kmeans(flat, k, seed=seed, iterations=self.iterations, backend=self.backend)
            if self.method == "closest_real":
                modes = flat[closest_points(flat, modes).to(flat.device)]
        return modes.view(k, *latents.shape[1:])


def modes_for_class(
    generator: DiffusionGenerator,
    data: ImageClassificationData,
    label: int,
    k: int,
    seed: int,
    backend: str = "auto",
    *,
    discovery: ModeDiscovery | None = None,
    cache: LatentCache | None = None,
) -> torch.Tensor:
    """k modes of one class; the class's latents come from ``cache`` (computed if absent)."""
    discovery = discovery or ModeDiscovery(backend=backend)
    latents = (cache or LatentCache(None)).class_latents(generator, data, label)
    return discovery(latents, k, seed=derive_seed(seed, "modes", label) % (2**31))


class LatentModesMixin:
    """Modes per class from latents read through the on-disk latent cache."""

    discovery: ModeDiscovery
    cache: LatentCache

    def validate(self, data: ImageClassificationData, ipc: int) -> None:
        if self.discovery.representative == "closest_real":
            data.check_ipc(ipc, "closest-real centres need ipc distinct real latents per class")
        data.check_ipc(ipc, f"{self.discovery.method} mode discovery needs at least ipc latents per class")

    def class_modes(self, generator, data, label, ipc, seed) -> torch.Tensor:
        return modes_for_class(generator, data, label, ipc, seed, discovery=self.discovery, cache=self.cache)

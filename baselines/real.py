"""Baselines that pick real images instead of generating: ``random``, ``kmeans_real``, ``herding``.

Selections are made per class in a feature space: flattened pixels (``space=pixels``, no
generator needed; ``feature_resolution`` shrinks the images first) or the generator's latents
(``space=latents``, read through the latent cache; MGD^3's "mode discovery only" row).
Each method offers the method interface (``ddcore/method.py``).
"""

from __future__ import annotations

import torch

from ddcore.data.base import ImageClassificationData, resize_images
from ddcore.distilled import random_positions
from ddcore.errors import UserError
from ddcore.kmeans import closest_points, kmeans
from ddcore.latent_cache import LatentCache
from ddcore.method import MethodBase, mode_ids
from ddcore.seeding import derive_seed

SPACES = ("pixels", "latents")


class RealSelection(MethodBase):
    """Shared step: select per class, then load the chosen train images."""

    name = "real"
    why = "the selection picks ipc distinct real images per class"

    def validate(self, data: ImageClassificationData, ipc: int) -> None:
        data.check_ipc(ipc, self.why)

    def select(self, data, label: int, ipc: int, seed: int, generator) -> tuple[torch.Tensor, dict]:
        """Positions (within the class's train images) of the ipc chosen images, and extra
        ``info`` for the class (``mode_id``/``modes`` for k-means)."""
        raise NotImplementedError

    def distill_class(
        self, data: ImageClassificationData, label: int, ipc: int, seed: int, generator=None
    ) -> tuple[torch.Tensor, dict]:
        positions, extra = self.select(data, label, ipc, seed, generator)
        indices = data.class_indices(label)[positions]
        return data.train.load(indices.tolist()), {"source_index": indices.tolist(), **extra}


class RandomReal(RealSelection):
    """IPC real train images per class, drawn uniformly without replacement."""

    name = "random"
    why = "random selection draws ipc distinct real images per class"

    def select(self, data, label, ipc, seed, generator=None) -> tuple[torch.Tensor, dict]:
        return random_positions(data, label, ipc, seed), {}


class FeatureSelection(RealSelection):
    """A selection in pixel or latent features (see the module docstring)."""

    def __init__(
        self,
        *,
        space: str,
        feature_resolution: int | None,
        latent_cache: bool,
        latent_cache_dir: str | None,
        latent_batch_size: int,
        latent_workers: int,
    ):
        if space not in SPACES:
            raise UserError(f"unknown method.space {space!r} (use one of: {', '.join(SPACES)})")
        self.space, self.feature_resolution = space, feature_resolution
        self.uses_generator = space == "latents"
        self.cache = LatentCache.from_settings(
            latent_cache, latent_cache_dir, latent_batch_size, latent_workers
        )

    def features(self, data, label: int, generator) -> torch.Tensor:
        """(n, ...) features of the class's train images, in class_indices order."""
        if self.space == "latents":
            return self.cache.class_latents(generator, data, label)
        images = data.class_images(label)
        return resize_images(images, self.feature_resolution) if self.feature_resolution else images


class KMeansReal(FeatureSelection):
    """The real image closest to each k-means centroid (k = IPC), each image at most once.

    The centroids (in feature space, shaped like the features) are the class's ``modes``.
    """

    name = "kmeans_real"
    why = "k-means needs at least k = ipc images per class"

    def __init__(self, *, kmeans_backend: str, **kwargs):
        super().__init__(**kwargs)
        self.kmeans_backend = kmeans_backend

    def select(self, data, label, ipc, seed, generator=None) -> tuple[torch.Tensor, dict]:
        feats = self.features(data, label, generator)
        flat = feats.flatten(1).float()
        centroids, _ = kmeans(
            flat, ipc, seed=derive_seed(seed, "modes", label) % (2**31), backend=self.kmeans_backend
        )
        modes = centroids.view(ipc, *feats.shape[1:]).cpu()
        return closest_points(flat, centroids), {**mode_ids(ipc), "modes": modes}


class Herding(FeatureSelection):
    """Greedy herding: each step adds the image that brings the running mean of the chosen
    features closest to the class mean (Welling 2009; deterministic, the seed is unused)."""

    name = "herding"
    why = "herding picks ipc distinct real images per class"

    def select(self, data, label, ipc, seed, generator=None) -> tuple[torch.Tensor, dict]:
        return herding(self.features(data, label, generator).flatten(1).float(), ipc), {}


def herding(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of k distinct rows whose running means track the mean of all rows.

    After choosing j rows with sum S, the next row f minimises ||(S + f) / (j + 1) - mu||,
    i.e. ||f - ((j + 1) mu - S)||: one matrix-vector product per step.
    """
    mu = features.mean(dim=0)
    norms = features.pow(2).sum(dim=1)
    total = torch.zeros_like(mu)
    taken = torch.zeros(len(features), dtype=torch.bool, device=features.device)
    chosen = []
    for j in range(k):
        target = (j + 1) * mu - total
        dist = norms - 2 * features @ target  # ||f - target||^2 up to a constant
        dist[taken] = float("inf")
        i = int(dist.argmin())
        chosen.append(i)
        taken[i] = True
        total += features[i]
    return torch.as_tensor(chosen, dtype=torch.long)

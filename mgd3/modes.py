"""Mode discovery (MGD^3 stage 1): k-means over a class's latents, k = IPC; centroids = modes."""

from __future__ import annotations

import torch

from ddcore.data.base import ImageClassificationData
from ddcore.generators.base import DiffusionGenerator
from ddcore.kmeans import kmeans
from ddcore.seeding import derive_seed


def class_latents(generator: DiffusionGenerator, data: ImageClassificationData,
                  label: int) -> torch.Tensor:
    """Latents of every train image of one class (images go through the generator's encoder)."""
    return generator.encode(data.class_images(label, "train"))


def discover_modes(latents: torch.Tensor, k: int, seed: int, backend: str = "auto",
                   iterations: int = 50) -> torch.Tensor:
    """k-means centroids of flattened latents, reshaped to latent shape: (k, C, H, W)."""
    centroids, _ = kmeans(latents.flatten(1), k, seed=seed, iterations=iterations,
                          backend=backend)
    return centroids.view(k, *latents.shape[1:])


def modes_for_class(generator, data, label: int, k: int, seed: int, backend: str = "auto"):
    return discover_modes(class_latents(generator, data, label), k,
                          seed=derive_seed(seed, "modes", label) % (2**31), backend=backend)

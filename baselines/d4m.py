"""The ``d4m`` baseline (docs/baselines.md): k-means prototypes of the class latents, denoised
from there (img2img) by the ``unguided`` sampler, without mode guidance."""

from __future__ import annotations

import torch

from baselines.unguided import UnguidedSampling
from ddcore.latent_cache import LatentCache
from ddcore.sampling import start_index
from mgd3.modes import LatentModesMixin, ModeDiscovery


class D4M(LatentModesMixin, UnguidedSampling):
    """D4M-style prototypes (docs/baselines.md): k-means prototypes of the class latents (k = IPC),
    each noised to ``strength`` of the schedule and denoised by the same sampler (img2img),
    conditioned on the class (a class-name prompt for Stable Diffusion). No mode guidance.

    Args:
        strength: 0.7 as D4M: with 50 steps the prototypes are noised to step index 34 and the
            last 35 steps run.
    """

    name = "d4m"

    def __init__(
        self,
        *,
        strength: float,
        kmeans_backend: str,
        latent_cache: bool,
        latent_cache_dir: str | None,
        latent_batch_size: int,
        latent_workers: int,
        **kwargs,
    ):
        super().__init__(**kwargs)
        start_index(self.steps, strength)  # range check: a UserError now, not mid-run
        self.strength = float(strength)
        self.discovery = ModeDiscovery("kmeans", kmeans_backend)
        self.cache = LatentCache.from_settings(
            latent_cache, latent_cache_dir, latent_batch_size, latent_workers
        )

    def start_latents(self, modes: torch.Tensor) -> torch.Tensor:
        return modes

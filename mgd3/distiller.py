"""MGD^3, mode-guided sampling: modes per class (k = IPC), sample j guided to mode j.

The ``unguided`` sampler (``baselines/unguided.py``) with two of its per-class hooks set: the
modes (``mgd3/modes.py``) and a guidance hook built from them (``mgd3/guidance.py``); for lam = 0
(or t_sg = steps) it returns exactly the unguided images.
"""

from __future__ import annotations

import torch

from baselines.unguided import UnguidedSampling
from ddcore.errors import UserError
from ddcore.latent_cache import LatentCache
from mgd3.guidance import ModeGuidance, check_injection
from mgd3.modes import LatentModesMixin, ModeDiscovery


class MGD3(LatentModesMixin, UnguidedSampling):
    """Mode-guided sampling: modes per class (k = IPC), sample j guided to mode j.

    Args:
        lam: guidance strength lambda (paper default 0.1; too large is catastrophic).
        t_sg: stop guidance -- guide only while the step index is above t_sg (0 = always,
            steps = never).
        injection: ``posterior_mean`` (official code, default), ``eps`` (paper eq. 6) or
            ``x0`` (shift x0_hat, re-derive eps); see ``mgd3/guidance.py`` for how they relate.
        mode_discovery: ``kmeans`` (default), ``closest_real``, ``random_real`` or ``dbscan``.
        kmeans_backend: ``auto`` (faiss if installed), ``faiss`` or ``torch``.
        dbscan_eps, dbscan_min_samples: DBSCAN settings (eps None: chosen from the data).
        linkage, divisive_criterion, divisive_level, divisive_tree_leaves, centres: the
            hierarchical options' settings (``agglomerative``, ``divisive``, ``divisive_levels``;
            ``ddcore/hierarchical.py``); centres: ``centroid`` | ``closest_real``.
        latent_cache, latent_cache_dir: keep the real latents on disk across runs.
        latent_batch_size, latent_workers: encoder batch and DataLoader decode workers.
    """

    name = "mgd3"

    def __init__(
        self,
        *,
        lam: float,
        t_sg: int,
        injection: str,
        mode_discovery: str,
        kmeans_backend: str,
        dbscan_eps: float | None,
        dbscan_min_samples: int,
        linkage: str,
        divisive_criterion: str,
        divisive_level: int,
        divisive_tree_leaves: int | None,
        centres: str,
        latent_cache: bool,
        latent_cache_dir: str | None,
        latent_batch_size: int,
        latent_workers: int,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not 0 <= lam < float("inf"):  # also rejects nan
            raise UserError(f"method.lam must be a finite number >= 0, got {lam}")
        if not 0 <= t_sg <= self.steps:
            raise UserError(
                f"method.t_sg={t_sg} is outside [0, {self.steps}] (the number of "
                "sampling steps, method.steps)"
            )
        self.lam, self.t_sg, self.injection = lam, t_sg, check_injection(injection)
        self.kmeans_backend = kmeans_backend
        self.discovery = ModeDiscovery(
            mode_discovery,
            kmeans_backend,
            dbscan_eps=dbscan_eps,
            dbscan_min_samples=dbscan_min_samples,
            linkage=linkage,
            criterion=divisive_criterion,
            level=int(divisive_level),
            tree_leaves=divisive_tree_leaves,
            representative=centres,
        )
        self.cache = LatentCache.from_settings(
            latent_cache, latent_cache_dir, latent_batch_size, latent_workers
        )

    def guidance(self, modes: torch.Tensor, label: int, seed: int) -> ModeGuidance:
        return ModeGuidance(modes, self.lam, self.t_sg, self.injection)

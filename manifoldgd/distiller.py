"""``method=manifoldgd``: MGD^3's sampler with hierarchical IPC centres and the manifold term.

The distiller is ``mgd3.distiller.MGD3`` with two hooks changed: the modes come from
hierarchical clustering (``mode_discovery``: ``divisive_levels`` by default, as the public
scripts run it) and the guidance hook adds the manifold term (``manifoldgd/guidance.py``).
Sharding, resume, outputs and figures are MGD^3's.
"""

from __future__ import annotations

import torch

from ddcore.errors import UserError
from ddcore.seeding import derive_seed
from manifoldgd.guidance import ManifoldGuidance, ManifoldSettings
from manifoldgd.manifold import RADIUS_SCHEDULES
from mgd3.distiller import MGD3


def check_settings(s: ManifoldSettings) -> ManifoldSettings:
    """One-line UserErrors for settings that cannot work (before any latent is computed)."""
    if not s.radius > 0:
        raise UserError(f"method.radius must be > 0 (the cloud radius r), got {s.radius}")
    if not 2 <= s.neighbours <= s.cloud_points:
        raise UserError(
            f"method.neighbours={s.neighbours} must be in [2, method.cloud_points="
            f"{s.cloud_points}] (K nearest cloud points)"
        )
    if not 0 <= s.tangent_dim < s.neighbours:
        raise UserError(
            f"method.tangent_dim={s.tangent_dim} must be smaller than "
            f"method.neighbours={s.neighbours} (K points span at most K - 1 directions)"
        )
    if not s.bandwidth > 0:
        raise UserError(f"method.bandwidth must be > 0, got {s.bandwidth}")
    if not 0 <= s.scale < float("inf"):
        raise UserError(f"method.manifold_scale must be a finite number >= 0, got {s.scale}")
    if s.warm_steps < 0 or not s.max_mult > 0:
        raise UserError(
            f"method.warm_steps must be >= 0 and method.max_mult > 0, got {s.warm_steps} and {s.max_mult}"
        )
    if s.schedule not in RADIUS_SCHEDULES:
        raise UserError(
            f"unknown method.radius_schedule {s.schedule!r} (use one of: {', '.join(RADIUS_SCHEDULES)})"
        )
    return s


class ManifoldGD(MGD3):
    """ManifoldGD: sample j guided to IPC centre j by the mode term and, while the step index is
    above t_sg, toward the tangent plane of a noised point cloud around that centre.

    Args (besides MGD^3's lam, t_sg, injection, ...):
        manifold_scale, radius, bandwidth, tangent_dim, neighbours, cloud_points,
        cloud_linspace_start, warm_steps, max_mult, radius_schedule: the manifold term
            (``manifoldgd/manifold.py``).
        mode_discovery: ``divisive_levels`` (the schema's), ``divisive``, ``agglomerative`` or any
            MGD^3 option; linkage, divisive_criterion, divisive_level, divisive_tree_leaves:
            its settings (``ddcore/hierarchical.py``); centres: ``centroid`` | ``closest_real``.
    """

    name = "manifoldgd"

    def __init__(
        self,
        *,
        manifold_scale: float,
        radius: float,
        bandwidth: float,
        tangent_dim: int,
        neighbours: int,
        cloud_points: int,
        cloud_linspace_start: float,
        warm_steps: int,
        max_mult: float,
        radius_schedule: str,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.settings = check_settings(
            ManifoldSettings(
                scale=float(manifold_scale),
                radius=float(radius),
                bandwidth=float(bandwidth),
                tangent_dim=int(tangent_dim),
                neighbours=int(neighbours),
                cloud_points=int(cloud_points),
                linspace_start=float(cloud_linspace_start),
                warm_steps=int(warm_steps),
                max_mult=float(max_mult),
                schedule=radius_schedule,
            )
        )

    def guidance(self, modes: torch.Tensor, label: int, seed: int) -> ManifoldGuidance:
        # the clouds' seed: per run seed and class, apart from the sampler's own generators, so
        # they depend neither on chunking nor on which classes share a batch
        return ManifoldGuidance(
            super().guidance(modes, label, seed),
            modes,
            self.settings,
            self.steps,
            derive_seed(seed, "manifold", label),
        )

"""ManifoldGD guidance: MGD^3's mode term plus the manifold term, while the step index > t_sg.

What the public code (AyushRoy2001/ManifoldGD, ``diffusion/gaussian_diffusion.py``,
``p_sample_with_mode_guidance`` / ``distribution_aware_guidance`` / ``get_noisy_manifold``)
does at each DDPM step, and how this hook does it:

- **Mode term**: ``phi * (x0_hat - m) * lam * sigma_t`` with the RBF factor
  phi = -1 / (1 + 1e-8), i.e. lam * sigma_t * (m - x0_hat) up to a factor 1 - 1e-8, added to
  the posterior mean. Here: ``mgd3.guidance.ModeGuidance`` unchanged (its ``injection`` and
  DDIM options included), so the factor is exactly 1.
- **Manifold term** (``manifoldgd/manifold.py``): built from x_t (the latent *before* the step,
  ``ctx.x``) and a fresh noised cloud around the sample's IPC centre, added unscaled to the
  posterior mean of x_{t-1} (conditional half; the null half's term is zero there and never
  reaches an output). The step index condition is the same as the mode term's (index > t_sg).
- **DDIM**: the public DDIM sampler adds the manifold term to x0_hat and re-derives eps; the
  DDIM update is linear in x0_hat at fixed x_t, so this hook adds
  (sqrt(abar_prev) - sqrt(1 - abar_prev) * sqrt(abar_t / (1 - abar_t))) * term to x_{t-1},
  the same change.

Deviations from the public code:

- Randomness. The public code draws each step's cloud from the global CUDA generator, so the
  clouds depend on the device and on everything drawn before. Here the cloud of sample j at
  step index i comes from a CPU ``torch.Generator`` seeded with
  ``derive_seed(class_seed, j, i)`` (class_seed from the run seed and the class), so images do
  not depend on ``method.batch_size`` chunking, the process count or the device.
- The eigendecomposition of the D x D covariance is replaced by the thin SVD of the K x D
  centred neighbours: the same U, orders of magnitude faster (see ``manifold.py``).
- An odd ``cloud_points`` P keeps P points (the public code drops one: 2 * (P // 2)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ddcore.sampling import StepContext
from ddcore.seeding import derive_seed
from manifoldgd.manifold import annealed_radius, noisy_cloud, normal_step
from mgd3.guidance import ModeGuidance


@dataclass(frozen=True)
class ManifoldSettings:
    scale: float = 0.1  # manifold_scale
    radius: float = 0.05  # r: cloud radius after the warm-up
    bandwidth: float = 0.2  # tanh(min_dist / bandwidth) distance weight
    tangent_dim: int = 3
    neighbours: int = 12  # K
    cloud_points: int = 300  # P
    linspace_start: float = 0.1  # half the cloud radii on linspace(linspace_start, r)
    warm_steps: int = 5
    max_mult: float = 2.0
    schedule: str = "exp"


class ManifoldGuidance:
    """Mode term (``ModeGuidance``) + manifold term for the samples of one class.

    Args:
        mode: the mode term, with the centres as its modes (sample j -> centre j).
        centres: (n, C, H, W) IPC centres of these samples.
        steps: sampling steps (the radius warm-up starts at index steps - 1).
        seed: the class's cloud seed; ``first``: class index of the first sample here.
    """

    def __init__(
        self,
        mode: ModeGuidance,
        centres: torch.Tensor,
        settings: ManifoldSettings,
        steps: int,
        seed: int,
        first: int = 0,
    ):
        self.mode, self.centres, self.settings = mode, centres, settings
        self.steps, self.seed, self.first = int(steps), int(seed), int(first)

    def subset(self, start: int, n: int) -> "ManifoldGuidance":
        """Samples start..start+n of the class: their clouds stay the same (seeded by index)."""
        return ManifoldGuidance(
            self.mode.subset(start, n),
            self.centres[start : start + n],
            self.settings,
            self.steps,
            self.seed,
            self.first + start,
        )

    def active(self, ctx: StepContext) -> bool:
        return self.settings.scale != 0.0 and ctx.index > self.mode.t_sg

    def clouds(self, ctx: StepContext) -> torch.Tensor:
        """(n, P, D) noised clouds around the centres at this step, on x's device."""
        s = self.settings
        radius = annealed_radius(
            ctx.index, self.steps, s.radius, self.mode.t_sg, s.max_mult, s.warm_steps, s.schedule
        )
        alpha_bar = float(ctx.alpha_bar)
        clouds = [
            noisy_cloud(
                centre,
                radius,
                alpha_bar,
                s.cloud_points,
                torch.Generator().manual_seed(derive_seed(self.seed, self.first + j, ctx.index)),
                s.linspace_start,
            )
            for j, centre in enumerate(self.centres)
        ]
        return torch.stack(clouds).to(ctx.x.device)

    def manifold_term(self, ctx: StepContext) -> torch.Tensor:
        s = self.settings
        x = ctx.x.flatten(1).float()
        step = normal_step(
            x,
            self.clouds(ctx),
            neighbours=s.neighbours,
            tangent_dim=s.tangent_dim,
            bandwidth=s.bandwidth,
            scale=s.scale,
        )
        return step.view_as(ctx.x)

    def injection_scale(self, ctx: StepContext) -> float:
        """1 for DDPM (posterior mean); DDIM: the change of x_{t-1} per unit shift of x0_hat."""
        if ctx.sampler != "ddim":
            return 1.0
        ab, ab_prev = float(ctx.alpha_bar), float(ctx.alpha_bar_prev)
        return math.sqrt(ab_prev) - math.sqrt(1.0 - ab_prev) * math.sqrt(ab / (1.0 - ab))

    def adjust_eps(self, eps: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return self.mode.adjust_eps(eps, ctx)

    def adjust_prev(self, x_prev: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        x_prev = self.mode.adjust_prev(x_prev, ctx)
        if not self.active(ctx):
            return x_prev
        return x_prev + self.injection_scale(ctx) * self.manifold_term(ctx).to(x_prev.dtype)

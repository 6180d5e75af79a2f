"""The manifold term of ManifoldGD: a noised point cloud around each IPC centre, and a step from
x_t toward the tangent plane of its nearest cloud points.

For a sample x_t (flattened, D entries) and its IPC centre m:

1. **Cloud** (``noisy_cloud``): P = 300 points m + rho_i * u_i on random unit directions u_i,
   half of the radii on ``linspace(linspace_start, r, P/2)``, half uniform in [0, r]; then
   noised to the current timestep, sqrt(abar_t) * p + sqrt(1 - abar_t) * noise, so the cloud
   sits where x_t lives.
2. **Tangent plane** (``normal_step``): the K = 12 cloud points nearest x_t, their mean mu and
   the top ``tangent_dim`` principal directions U (D x d).
3. **Step**: along the normal component n = -(I - U U^T)(x_t - mu), normalised, times
   ``scale * tanh(min_dist / bandwidth)`` (min_dist: x_t to its nearest cloud point). It is
   added to the posterior mean of x_{t-1} (see ``manifoldgd/guidance.py``).
4. **Radius warm-up** (``annealed_radius``): r starts at ``r * max_mult`` at the first step
   and reaches r after ``warm_steps`` steps (linear / cosine / exp), then stays.

Exact and fast: the public code builds the D x D covariance of the K centred neighbours per
sample per step and eigendecomposes it (D = 4096 for DiT-XL/2: O(D^3) per sample). The
covariance C = A^T A / (K - 1) of the centred K x D matrix A has rank <= K - 1, and its
eigenvectors with non-zero eigenvalues are the right singular vectors of A (eigenvalues
s_i^2 / (K - 1)); so U comes from the thin SVD of A, batched over samples: O(K^2 D) per sample.
The public code's ridge (C + 1e-5 I) shifts every eigenvalue equally and leaves U unchanged.
``tests/test_manifoldgd.py`` checks the step against the D x D eigendecomposition to 1e-5;
``experiments/bench_manifoldgd.py`` times both.
"""

from __future__ import annotations

import math

import torch

RADIUS_SCHEDULES = ("linear", "cosine", "exp")


def annealed_radius(
    index: int, steps: int, radius: float, t_sg: int, max_mult: float, warm_steps: int, schedule: str
) -> float:
    """The cloud radius at step ``index`` (steps-1..0): r * (1 + (max_mult - 1) * s(p)), with p
    going 1 -> 0 over the first ``warm_steps`` steps (never past t_sg), s = p (linear),
    (1 + cos(pi (1 - p))) / 2 (cosine) or (e^p - 1) / (e - 1) (exp); r afterwards."""
    top = steps - 1
    cut = max(t_sg, top - warm_steps)
    if index <= cut or max_mult <= 1.0:
        return float(radius)
    p = min(max((index - cut) / max(1, top - cut), 0.0), 1.0)
    s = {
        "linear": p,
        "cosine": 0.5 * (1.0 + math.cos(math.pi * (1.0 - p))),
        "exp": (math.exp(p) - 1.0) / (math.e - 1.0),
    }[schedule]
    return float(radius * (1.0 + (max_mult - 1.0) * s))


def noisy_cloud(
    centre: torch.Tensor,
    radius: float,
    alpha_bar: float,
    points: int,
    rng: torch.Generator,
    linspace_start: float = 0.1,
) -> torch.Tensor:
    """``points`` cloud points around ``centre`` (D,), noised to alpha_bar -> (points, D).

    Drawn on the CPU from ``rng`` (directions, uniform radii, diffusion noise, in that order),
    so a cloud does not depend on the device.
    """
    dim = centre.numel()
    directions = torch.randn(points, dim, generator=rng)
    directions = directions / directions.norm(dim=1, keepdim=True)
    swept = torch.linspace(linspace_start, radius, points // 2)
    radii = torch.cat([swept, torch.rand(points - len(swept), generator=rng) * radius])
    cloud = centre.detach().float().cpu().flatten() + radii[:, None] * directions
    noise = torch.randn(points, dim, generator=rng)
    return math.sqrt(alpha_bar) * cloud + math.sqrt(1.0 - alpha_bar) * noise


def tangent_frame(x: torch.Tensor, clouds: torch.Tensor, neighbours: int, tangent_dim: int):
    """For each row of x (B, D) and its cloud (B, P, D): (mu (B, D), U (B, d, D) with the top
    principal directions as rows, min_dist (B,)), from the ``neighbours`` nearest points."""
    dist = (clouds - x[:, None]).pow(2).sum(dim=2).sqrt()  # (B, P), exact (no mm trick)
    near, idx = dist.topk(neighbours, dim=1, largest=False)
    picked = clouds.gather(1, idx[..., None].expand(-1, -1, clouds.shape[2]))  # (B, K, D)
    mu = picked.mean(dim=1)
    _, _, vh = torch.linalg.svd(picked - mu[:, None], full_matrices=False)  # (B, K, D)
    return mu, vh[:, :tangent_dim], near[:, 0]


def normal_step(
    x: torch.Tensor,
    clouds: torch.Tensor,
    *,
    neighbours: int,
    tangent_dim: int,
    bandwidth: float,
    scale: float,
) -> torch.Tensor:
    """scale * tanh(min_dist / bandwidth) * n / |n|, n = -(I - U U^T)(x - mu) -> (B, D)."""
    mu, u, min_dist = tangent_frame(x, clouds, neighbours, tangent_dim)
    to_mu = x - mu
    normal = -(to_mu - torch.einsum("bk,bkd->bd", torch.einsum("bd,bkd->bk", to_mu, u), u))
    direction = normal / (normal.norm(dim=1, keepdim=True) + 1e-8)
    return scale * torch.tanh(min_dist / bandwidth)[:, None] * direction

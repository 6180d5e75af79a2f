"""Stage I: where in an image does the class condition help the denoiser most?

For a real latent z of class c (docs/patchsel.md), the paper scores

    R(z | c) = E_{eps, t} [ L_t(z, eps, c) - L_t(z, eps, null) ],
    L_t = || eps_theta(sqrt(abar_t) z + sqrt(1 - abar_t) eps, t, cond) - eps ||^2,

per latent position (the squared error summed over latent channels, not over space), with
t ~ U(0.1, 0.7) of the training schedule and the same eps in both terms.

Sign convention. The denoising loss is a variational bound on -log p(z | cond), so
L(c) - L(null) estimates log p(z) - log p(z | c) = -log p(c | z) + const: the paper's R is
*low* where the class explains the region (its eq. 5), while its Algorithm 1 takes an argmax.
We therefore use the negated difference,

    relevance = E [ L_t(null) - L_t(c) ]   (higher = the class explains this region better),

so that every later step (best window, cluster ranking, shortfall fill) maximises relevance
and the "argmax" of Algorithm 1 means what the paper intends. ``tests/test_patchsel.py``
checks this on the tiny DiT trained on digits: positions on the digit outrank the empty border.

Both terms come from one batched forward (``[z_t; z_t]`` with ``[c; null]``), which costs about
one pass of a twice larger batch; ``batched=False`` runs two passes (for the benchmark).
Every image draws its timesteps and noise from its own generator, keyed by its position in
its class, so a map does not depend on the batch size, on the other images scored with it, or
on the process that scores it.
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from ddcore.generators.base import DiffusionGenerator
from ddcore.sampling import scheduler_settings
from ddcore.seeding import rng_for


def alphas_cumprod(generator: DiffusionGenerator) -> torch.Tensor:
    """abar_t of the generator's training schedule, (T,)."""
    return DDPMScheduler.from_config(scheduler_settings(generator.scheduler_config)).alphas_cumprod.float()


def draw_noise(
    shape: tuple[int, ...], draws: int, t_range: tuple[float, float], steps: int, seed: int, key
) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps (draws,), eps (draws, *shape)) for one image, from its own generator."""
    rng = rng_for(seed, "relevance", key)
    low, high = t_range
    u = low + (high - low) * torch.rand(draws, generator=rng)
    timesteps = (u * steps).long().clamp(0, steps - 1)
    return timesteps, torch.randn((draws, *shape), generator=rng)


def loss_maps(
    generator: DiffusionGenerator,
    z_t: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    cond: torch.Tensor,
    null: torch.Tensor,
    batched: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position squared errors (n, h, w) of the conditional and the null prediction."""
    n = len(z_t)
    if batched:
        out = generator.denoise(torch.cat([z_t, z_t]), torch.cat([t, t]), torch.cat([cond, null]))
        pred_cond, pred_null = generator.split_output(out)[0].split(n)
    else:
        pred_cond = generator.split_output(generator.denoise(z_t, t, cond))[0]
        pred_null = generator.split_output(generator.denoise(z_t, t, null))[0]
    return ((pred_cond - eps) ** 2).sum(1), ((pred_null - eps) ** 2).sum(1)


@torch.no_grad()
def relevance_maps(
    generator: DiffusionGenerator,
    latents: torch.Tensor,
    cond: torch.Tensor,
    null: torch.Tensor,
    keys: list,
    *,
    draws: int = 4,
    t_range: tuple[float, float] = (0.1, 0.7),
    seed: int = 0,
    batched: bool = True,
    batch_size: int = 64,
    abar: torch.Tensor | None = None,
) -> torch.Tensor:
    """relevance = E[L(null) - L(c)] per latent position, (n, h, w), for latents (n, C, h, w).

    Args:
        cond, null: the condition of the class and the null condition, batch dimension 1.
        keys: one per latent (e.g. its position in the class): seeds its noise draws.
        draws: noise/timestep draws per latent (the expectation's sample size).
        batch_size: rows per forward pass (each latent contributes ``draws`` rows, twice).
    """
    if len(keys) != len(latents):
        raise ValueError(f"{len(keys)} keys for {len(latents)} latents")
    abar = alphas_cumprod(generator) if abar is None else abar
    steps = len(abar)
    device = generator.device
    per_chunk = max(1, batch_size // draws)
    out = []
    for start in range(0, len(latents), per_chunk):
        z = latents[start : start + per_chunk].float()
        noise = [
            draw_noise(tuple(z.shape[1:]), draws, t_range, steps, seed, key)
            for key in keys[start : start + per_chunk]
        ]
        t = torch.cat([nt[0] for nt in noise])
        eps = torch.cat([nt[1] for nt in noise]).to(device)
        z = z.to(device).repeat_interleave(draws, dim=0)
        a = abar[t].to(device).view(-1, 1, 1, 1)
        z_t = a.sqrt() * z + (1 - a).sqrt() * eps
        rows = len(z_t)
        l_cond, l_null = loss_maps(
            generator,
            z_t,
            t.to(device),
            eps,
            cond.expand(rows, *cond.shape[1:]),
            null.expand(rows, *null.shape[1:]),
            batched,
        )
        diff = (l_null - l_cond).view(-1, draws, *l_cond.shape[1:]).mean(1)
        out.append(diff.float().cpu())
    return torch.cat(out)

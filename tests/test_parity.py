"""Parity with the official MGD^3 sampler, step for step.

The reference below is written from the formulas of DiT's ``GaussianDiffusion`` (respaced with
``create_diffusion("50")`` / ``"ddim50"``), DiT's ``forward_with_cfg`` and MGD^3's
``p_sample_with_mode_guidance`` -- not from our sampler. Both run the same tiny learned-sigma DiT
(loaded through ``load_dit`` with the ``generator=dit_xl2`` grid settings) from the same x_T with
the same per-step noise, and every x_{t-1} must agree to 1e-4 relative.
"""

import math
from pathlib import Path

import pytest
import torch
from diffusers.schedulers import scheduling_ddpm
from omegaconf import OmegaConf

import ddcore.sampling
from ddcore.data.small import digits
from ddcore.errors import UserError
from ddcore.generators.dit import load_dit
from ddcore.sampling import make_scheduler, sample_latents
from mgd3.guidance import ModeGuidance
from tests.configs import generator_settings
from tests.test_generators_dit import save_tiny_dit

STEPS, T_TRAIN, N, CFG = 50, 1000, 3, 4.0
CONF = Path(__file__).resolve().parents[1] / "conf" / "generator"


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dit")
    save_tiny_dit(folder, num_classes=10, vae=True, learned_variance=True, train_timesteps=T_TRAIN)
    grid = OmegaConf.to_container(OmegaConf.load(CONF / "dit_xl2.yaml").timestep_spacing)
    gen = load_dit(
        digits(),
        **generator_settings(
            "dit_xl2",
            path=str(folder),
            vae=None,
            resolution=16,
            class_space="dataset",
            cfg_scale=CFG,
            timestep_spacing=grid,
        ),
    )
    torch.manual_seed(0)  # random weights of a visible size, so eps and the variance matter
    with torch.no_grad():
        for p in gen.denoiser.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return gen


# -- the reference: official formulas ---------------------------------------------------------
def respaced(grid: list[int]):
    """Betas of the 1000-step linear schedule respaced to ``grid`` (DiT's space_timesteps)."""
    abar_full = torch.cumprod(1 - torch.linspace(1e-4, 0.02, T_TRAIN, dtype=torch.float64), 0)
    last, betas = 1.0, []
    for t in grid:
        betas.append(1 - abar_full[t].item() / last)
        last = abar_full[t].item()
    betas = torch.tensor(betas, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    return betas, abar, abar_prev


def forward_with_cfg(gen, x, t, labels):
    """DiT's forward_with_cfg: guided eps on the first 3 channels of both halves, the 4th eps
    channel and the variance channels per row; we return the first (conditional) half."""
    y = torch.cat([labels, torch.full_like(labels, gen.null_label)])
    out = gen.denoiser(torch.cat([x, x]), torch.full((2 * len(x),), t), class_labels=y).sample
    eps, rest = out[:, :3], out[:, 3:]
    cond, uncond = eps.chunk(2)
    half = uncond + CFG * (cond - uncond)
    return torch.cat([torch.cat([half, half]), rest], dim=1)[: len(x)]


def official_ddpm(gen, x, labels, noises, modes, lam, t_sg):
    grid = [round(i * (T_TRAIN - 1) / (STEPS - 1)) for i in range(STEPS)]
    betas, abar, abar_prev = respaced(grid)
    post_var = betas * (1 - abar_prev) / (1 - abar)
    post_log_var = torch.log(torch.cat([post_var[1:2], post_var[1:]]))  # "clipped"
    coef_x0 = betas * abar_prev.sqrt() / (1 - abar)
    coef_xt = (1 - abar_prev) * (1 - betas).sqrt() / (1 - abar)
    xs = []
    for i in reversed(range(STEPS)):
        out = forward_with_cfg(gen, x, grid[i], labels)
        eps, v = out[:, :4], out[:, 4:]
        frac = (v + 1) / 2
        log_var = frac * math.log(betas[i]) + (1 - frac) * post_log_var[i].item()
        x0 = (1 / abar[i]).sqrt().item() * x - (1 / abar[i] - 1).sqrt().item() * eps
        mean = coef_x0[i].item() * x0 + coef_xt[i].item() * x
        if i > t_sg:  # p_sample_with_mode_guidance
            mean = mean + lam * torch.exp(0.5 * log_var) * (modes - x0)
        x = mean + (torch.exp(0.5 * log_var) * noises[STEPS - 1 - i] if i > 0 else 0)
        xs.append(x)
    return xs


def official_ddim(gen, x, labels, modes, lam, t_sg, injection):
    grid = list(range(0, T_TRAIN, T_TRAIN // STEPS))  # "ddim50"
    _, abar, abar_prev = respaced(grid)
    xs = []
    for i in reversed(range(STEPS)):
        a, a_prev = abar[i].item(), abar_prev[i].item()
        eps = forward_with_cfg(gen, x, grid[i], labels)[:, :4]
        x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        shift = 0.0
        if i > t_sg:
            g = modes - x0
            if injection == "eps":  # Algorithm 1, pulling toward the mode
                eps = eps - lam * math.sqrt(1 - a) * g
                x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
            elif injection == "x0":  # shift x0_hat, re-derive eps
                x0 = x0 + lam * g
                eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
            else:  # posterior_mean, DDIM scale sqrt(abar_t)
                shift = lam * math.sqrt(a) * g
        x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps + shift
        xs.append(x)
    return xs


# -- ours, with the same x_T and per-step noise -----------------------------------------------
class Recorder:
    def __init__(self, inner):
        self.inner, self.xs = inner, []

    def adjust_eps(self, eps, ctx):
        return self.inner.adjust_eps(eps, ctx)

    def adjust_prev(self, x_prev, ctx):
        x = self.inner.adjust_prev(x_prev, ctx)
        self.xs.append(x)
        return x


def ours(gen, monkeypatch, x_T, noises, modes, lam, t_sg, sampler, injection="posterior_mean", **kwargs):
    queue = list(noises)
    monkeypatch.setattr(ddcore.sampling, "initial_noise", lambda *a, **k: x_T.clone())
    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda shape, **k: queue.pop(0).clone())
    rec = Recorder(ModeGuidance(modes, lam, t_sg, injection))
    sample_latents(
        gen,
        torch.arange(N),
        rng=torch.Generator().manual_seed(0),
        steps=STEPS,
        sampler=sampler,
        guidance=rec,
        **kwargs,
    )
    return rec.xs


def inputs(gen):
    g = torch.Generator().manual_seed(1)
    shape = (N, *gen.latent_shape)
    x_T = torch.randn(shape, generator=g)
    noises = [torch.randn(shape, generator=g) for _ in range(STEPS)]
    return x_T, noises, torch.randn(shape, generator=g)


def assert_chains_agree(mine, reference, tol=1e-4):
    assert len(mine) == len(reference) == STEPS
    for step, (a, b) in enumerate(zip(mine, reference)):
        rel = ((a - b).norm() / b.norm()).item()
        assert rel < tol, f"step {step}: relative difference {rel:.2e}"


@pytest.mark.parametrize("lam", [0.0, 0.1])
@torch.no_grad()
def test_ddpm_matches_the_official_sampler_step_for_step(generator, monkeypatch, lam):
    x_T, noises, modes = inputs(generator)
    reference = official_ddpm(generator, x_T, torch.arange(N), noises, modes, lam, t_sg=25)
    assert_chains_agree(ours(generator, monkeypatch, x_T, noises, modes, lam, 25, "ddpm"), reference)


@pytest.mark.parametrize("injection", ["posterior_mean", "eps", "x0"])
@torch.no_grad()
def test_ddim_matches_the_reference_for_each_injection(generator, monkeypatch, injection):
    x_T, noises, modes = inputs(generator)
    reference = official_ddim(generator, x_T, torch.arange(N), modes, 0.1, 25, injection)
    assert_chains_agree(
        ours(generator, monkeypatch, x_T, noises, modes, 0.1, 25, "ddim", injection), reference
    )


@torch.no_grad()
def test_the_test_sees_the_differences_it_was_written_for(generator, monkeypatch):
    """The old settings (diffusers' leading grid; x0_hat from the conditional half) fail it."""
    x_T, noises, modes = inputs(generator)
    reference = official_ddpm(generator, x_T, torch.arange(N), noises, modes, 0.1, t_sg=25)
    for kwargs in ({"timestep_spacing": "leading"}, {"x0_from": "cond"}):
        with pytest.raises(AssertionError):
            assert_chains_agree(
                ours(generator, monkeypatch, x_T, noises, modes, 0.1, 25, "ddpm", **kwargs), reference
            )


def test_grids(generator):
    ddpm = make_scheduler(generator, "ddpm", STEPS).timesteps.tolist()
    assert ddpm[:3] == [999, 979, 958] and ddpm[-2:] == [20, 0]
    assert make_scheduler(generator, "ddim", STEPS).timesteps.tolist()[:2] == [980, 960]
    leading = make_scheduler(generator, "ddpm", STEPS, "leading").timesteps.tolist()
    assert sum(a != b for a, b in zip(ddpm, leading)) == 48
    with pytest.raises(UserError, match="uniform timestep grid"):
        make_scheduler(generator, "ddim", STEPS, "linspace")
    with pytest.raises(UserError, match="timestep_spacing"):
        make_scheduler(generator, "ddpm", STEPS, "quadratic")

"""DDPM and DDIM with both guidance injections: they run, pull toward the modes, and do nothing
when guidance is stopped; img2img starts; bad settings are one-line errors."""

import pytest
import torch

from ddapp.jobs import build
from ddapp.stages import prepare_distillation
from ddcore.errors import UserError
from ddcore.sampling import StepContext, predicted_x0, sample_latents, start_index
from ddcore.seeding import rng_for
from mgd3.guidance import ModeGuidance
from mgd3.modes import modes_for_class
from tests.distill import distill_set

SAMPLERS = ["ddpm", "ddim"]
INJECTIONS = ["posterior_mean", "eps", "x0"]
FAST = ["method.steps=4", "method.t_sg=1"]


def distill(make_cfg, *overrides):
    cfg = make_cfg(*overrides)
    data, method, generator = prepare_distillation(cfg)
    return distill_set(method, data, cfg.ipc, cfg.seed, generator), data


class Recorder:
    """A guidance wrapper that records each step's index and x0_hat."""

    def __init__(self, inner=None):
        self.inner, self.indices, self.x0 = inner, [], []

    def adjust_eps(self, eps, ctx):
        self.indices.append(ctx.index)
        self.x0.append(ctx.x0_hat)
        return self.inner.adjust_eps(eps, ctx) if self.inner else eps

    def adjust_prev(self, x_prev, ctx):
        return self.inner.adjust_prev(x_prev, ctx) if self.inner else x_prev


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("injection", INJECTIONS)
def test_mgd3_runs_with_each_sampler_and_injection(make_cfg, sampler, injection):
    out, data = distill(
        make_cfg, "method=mgd3", *FAST, f"method.sampler={sampler}", f"method.injection={injection}"
    )
    assert out.images.shape == (10 * 2, 1, 16, 16) and out.images.dtype == torch.uint8  # read back
    assert int(out.images.max()) > int(out.images.min())  # not a constant image
    assert out.info["mode_id"][:2] == [0, 1]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_t_sg_equal_to_steps_gives_the_unguided_images_exactly(make_cfg, sampler):
    plain, _ = distill(make_cfg, "method=unguided", "method.steps=4", f"method.sampler={sampler}")
    for injection in INJECTIONS:
        stopped, _ = distill(
            make_cfg,
            "method=mgd3",
            "method.steps=4",
            "method.t_sg=4",
            f"method.sampler={sampler}",
            f"method.injection={injection}",
        )
        assert torch.equal(plain.images, stopped.images), injection


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("injection", INJECTIONS)
def test_guidance_pulls_x0_hat_toward_its_mode(make_cfg, sampler, injection):
    cfg = make_cfg("method=mgd3")
    data, _, generator = prepare_distillation(cfg)
    modes = modes_for_class(generator, data, label=3, k=3, seed=0)
    labels = torch.full((3,), 3)

    def x0_trajectory(guidance):
        recorder = Recorder(guidance)
        sample_latents(
            generator, labels, rng=rng_for(0, "pull", 3), steps=10, sampler=sampler, guidance=recorder
        )
        return recorder.x0

    plain = x0_trajectory(None)
    guided = x0_trajectory(ModeGuidance(modes, lam=1.0, t_sg=0, injection=injection))
    dist = lambda x: (x - modes).flatten(1).norm(dim=1).mean()  # noqa: E731
    # x0_hat of the last step (index 0) is the guided trajectory's endpoint
    assert dist(guided[-1]) < 0.85 * dist(plain[-1])


def test_posterior_mean_scale_is_sigma_for_ddpm_and_sqrt_alpha_bar_for_ddim():
    modes, x0 = torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    guidance = ModeGuidance(modes, lam=0.5, t_sg=0)
    for sampler, expected in (("ddpm", 0.5 * 0.3), ("ddim", 0.5 * 0.8)):
        ctx = StepContext(
            index=5,
            timestep=torch.tensor(500),
            x0_hat=x0,
            sigma=torch.tensor(0.3),
            alpha_bar=torch.tensor(0.64),
            sampler=sampler,
        )
        assert torch.equal(guidance.adjust_eps(x0, ctx), x0)  # posterior_mean leaves eps alone
        assert torch.allclose(guidance.adjust_prev(x0, ctx), torch.full_like(x0, expected))


@pytest.mark.parametrize(
    "injection, factor",
    [
        ("eps", 0.36 / 0.8),  # paper eq. 6 with the sign that pulls: lam (1 - abar) / sqrt(abar) g
        ("x0", 1.0),  # x0_hat shifted by lam g, eps re-derived from it
    ],
)
def test_eps_routes_move_x0_hat_toward_the_mode_and_leave_x_prev_alone(injection, factor):
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(clip_sample=False)
    x, eps, alpha_bar = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.tensor(0.64)
    x0 = predicted_x0(scheduler, x, eps, alpha_bar)
    modes = torch.randn(2, 3, 4, 4)
    ctx = StepContext(
        index=5, timestep=torch.tensor(500), x0_hat=x0, sigma=torch.tensor(0.3), alpha_bar=alpha_bar
    )
    guidance = ModeGuidance(modes, lam=0.5, t_sg=0, injection=injection)
    moved = predicted_x0(scheduler, x, guidance.adjust_eps(eps, ctx), alpha_bar)
    assert torch.allclose(moved - x0, 0.5 * factor * (modes - x0), atol=1e-5)
    assert torch.equal(guidance.adjust_prev(x, ctx), x)


@pytest.mark.parametrize("lam, words", [("inf", "finite"), ("nan", "finite"), ("1e9", "diverged")])
def test_unusable_guidance_is_one_line_not_black_images(make_cfg, lam, words):
    cfg = make_cfg("method=mgd3", "method.steps=4", "method.t_sg=0", f"method.lam={lam}")
    data, method, generator = (None, None, None)
    with pytest.raises(UserError, match=words) as err:
        data, method, generator = prepare_distillation(cfg)
        method.distill_class(data, 0, 2, 0, generator)
    assert "\n" not in str(err.value)


def test_negative_cfg_scale_is_refused(make_cfg):
    with pytest.raises(UserError, match="cfg_scale"):
        build(make_cfg("method=mgd3", "method.cfg_scale=-5").method)


def test_img2img_start_runs_the_last_steps_and_stays_near_its_start(make_cfg):
    assert start_index(50, 0.7) == 34 and start_index(10, 1.0) == 9
    cfg = make_cfg("method=unguided")
    data, _, generator = prepare_distillation(cfg)
    init = modes_for_class(generator, data, label=5, k=2, seed=0)
    labels, recorder = torch.full((2,), 5), Recorder()
    near = sample_latents(
        generator, labels, rng=rng_for(0, "i2i"), steps=10, init=init, strength=0.2, guidance=recorder
    )
    far = sample_latents(generator, labels, rng=rng_for(0, "i2i"), steps=10)
    assert recorder.indices == [1, 0]
    assert (near - init).norm() < (far - init).norm()


@pytest.mark.parametrize(
    "override, words",
    [
        ("method.injection=score", ["method.injection", "'score'", "posterior_mean, eps, x0"]),
        ("method.timestep_spacing=cosine", ["method.timestep_spacing", "'cosine'", "linspace"]),
        ("method.x0_from=null_half", ["method.x0_from", "'null_half'", "cfg"]),
        ("method.sampler=euler", ["method.sampler", "'euler'", "ddpm, ddim"]),
    ],
)
def test_unknown_injection_or_sampler_is_a_one_line_error(make_cfg, override, words):
    cfg = make_cfg("method=mgd3", override)
    with pytest.raises(UserError) as err:
        build(cfg.method)
    assert all(w in str(err.value) for w in words) and "\n" not in str(err.value)

"""generator=ldm_tiny: the framework's VAE + a DiT on its latents, as an ordinary generator."""

import pytest
import torch

import ddcore.generators.self_trained.loader as self_trained_loader
import ddcore.generators.vae as vae_module
from ddapp.jobs import build
from ddapp.stages import prepare_distillation
from ddcore.data.base import ImageClassificationData, TensorSource
from ddcore.generators.base import VAECodec
from ddcore.kmeans import kmeans
from ddcore.seeding import derive_seed
from mgd3.modes import modes_for_class
from tests.distill import distill_set


def run_task(make_cfg, task):
    cfg = make_cfg("generator=ldm_tiny", f"task={task}")
    return build(cfg.task)(cfg)


def test_train_vae_then_train_generator_are_cached_and_reused(make_cfg, monkeypatch):
    vae_metrics = run_task(make_cfg, "train_vae")
    assert vae_metrics["vae/test_reconstruction_mse"] > 0 and vae_metrics["vae/scaling_factor"] > 0
    monkeypatch.setattr(vae_module, "train_vae", lambda *a, **k: pytest.fail("VAE retrained"))
    gen_metrics = run_task(make_cfg, "train_generator")  # trains the denoiser on cached latents
    assert gen_metrics["vae"]["scaling_factor"] == vae_metrics["vae/scaling_factor"]
    monkeypatch.setattr(self_trained_loader, "train_denoiser", lambda *a, **k: pytest.fail("retrained"))
    _, _, generator = prepare_distillation(make_cfg("generator=ldm_tiny", "method=mgd3"))
    assert isinstance(generator.codec, VAECodec) and generator.latent_shape == (2, 8, 8)


def test_mgd3_with_lam_zero_equals_unguided_on_the_latent_generator(make_cfg):
    cfg = make_cfg("generator=ldm_tiny", "method=unguided", "method.steps=6")
    data, unguided, generator = prepare_distillation(cfg)
    mgd3 = build(
        make_cfg(
            "generator=ldm_tiny", "method=mgd3", "method.steps=6", "method.lam=0", "method.t_sg=0"
        ).method
    )
    plain = distill_set(unguided, data, 2, 0, generator)
    assert torch.equal(plain.images, distill_set(mgd3, data, 2, 0, generator).images)
    assert plain.images.shape == (20, 1, 16, 16)


def test_modes_are_found_in_the_vae_latent_space(make_cfg):
    _, _, generator = prepare_distillation(make_cfg("generator=ldm_tiny", "method=mgd3"))
    # one class of two kinds of image: blank and bright, 6 of each
    images = torch.cat([torch.zeros(6, 1, 16, 16), torch.full((6, 1, 16, 16), 255)]).to(torch.uint8)
    source = TensorSource(images, torch.zeros(12, dtype=torch.long))
    two = ImageClassificationData("two", ["a"], ["a"], 16, 1, source, source)
    modes = modes_for_class(generator, two, 0, 2, seed=0)
    assert modes.shape == (2, *generator.latent_shape)
    latents = generator.encode(images.float() / 255)
    expected, _ = kmeans(latents.flatten(1), 2, seed=derive_seed(0, "modes", 0) % (2**31))
    assert torch.allclose(modes.flatten(1), expected, atol=1e-5)  # k-means of VAE latents
    kinds = torch.stack([latents[:6].mean(0), latents[6:].mean(0)]).flatten(1)
    assert torch.cdist(modes.flatten(1), kinds).min(dim=1).values.max() < 1e-4  # one per kind


def test_a_latent_size_that_does_not_divide_the_image_is_one_line(make_cfg):
    from ddcore.errors import UserError

    cfg = make_cfg(
        "generator=ldm_tiny",
        "method=unguided",
        "generator.vae.arch.block_out_channels=[8,8,8,8,8,8]",
        tiny=False,
    )
    with pytest.raises(UserError, match="does not divide the image size 16") as err:
        prepare_distillation(cfg)
    assert "\n" not in str(err.value)

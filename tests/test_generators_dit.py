"""DiT loading: tiny models saved in the hub layout and loaded back offline; null class."""

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler

from ddcore.data.small import digits
from ddcore.errors import UserError
from ddcore.generators.dit import build_dit, load_dit
from ddcore.sampling import sample_latents
from ddcore.seeding import rng_for


def save_tiny_dit(
    folder, num_classes=10, in_channels=1, vae=False, learned_variance=False, train_timesteps=100
):
    tiny = dict(num_layers=1, num_attention_heads=2, attention_head_dim=8, patch_size=2)
    channels = 4 if vae else in_channels
    build_dit(channels, 8 if vae else 16, num_classes, learned_variance, **tiny).save_pretrained(
        folder / "transformer"
    )
    DDPMScheduler(num_train_timesteps=train_timesteps, clip_sample=False).save_pretrained(
        folder / "scheduler"
    )
    if vae:
        AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(8, 8),
            layers_per_block=1,
            norm_num_groups=4,
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
        ).save_pretrained(folder / "vae")
    return folder


def test_folder_without_vae_is_one_line(tmp_path):
    folder = save_tiny_dit(tmp_path / "dit", num_classes=10)
    with pytest.raises(UserError, match="vae"):
        load_dit(digits(), path=str(folder), vae=None, class_space="dataset", resolution=16)


def test_round_trip_latent_dit_with_learned_variance(tmp_path):
    folder = save_tiny_dit(tmp_path / "dit", num_classes=10, vae=True, learned_variance=True)
    data = digits()
    gen = load_dit(data, path=str(folder), vae=None, resolution=16, class_space="dataset")
    assert gen.null_label == 10 and gen.learned_variance and gen.latent_shape == (4, 8, 8)
    assert gen.cfg_channels == 3 and not gen.pixel_space
    latents = gen.encode(data.class_images(0)[:2])
    assert latents.shape == (2, 4, 8, 8)
    assert gen.decode(latents).shape == (2, 1, 16, 16)  # RGB decoded back to the data's gray
    out = sample_latents(gen, torch.tensor([0, 1]), rng=rng_for(0, "x"), steps=4)
    assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()


def test_imagenet_dit_on_non_imagenet_classes_is_refused(tmp_path):
    folder = save_tiny_dit(tmp_path / "dit", num_classes=1000, vae=True)
    with pytest.raises(UserError, match="not ImageNet wnids"):
        load_dit(digits(), path=str(folder), vae=None, resolution=16)


def test_missing_hub_model_is_one_line(tmp_path):
    with pytest.raises(UserError, match="generator.path"):
        load_dit(digits(), path="facebook/DiT-XL-2-256", vae=None)

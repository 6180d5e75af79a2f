"""DiT loading: tiny models saved in the hub layout and loaded back offline; null class."""

import json

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiTTransformer2DModel

from ddcore.data.small import digits
from ddcore.errors import UserError
from ddcore.generators.dit import build_dit, load_dit
from ddcore.generators.hub import DIT_XL2_256, SD_VAE_FT_MSE
from ddcore.sampling import make_scheduler, sample_latents
from ddcore.seeding import rng_for
from tests.configs import generator_settings
from tests.test_hub_layouts import RES, imagenet_data, save_hub_layout


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
        load_dit(
            digits(),
            **generator_settings("dit_xl2", path=str(folder), vae=None, class_space="dataset", resolution=16),
        )


def test_round_trip_latent_dit_with_learned_variance(tmp_path):
    folder = save_tiny_dit(tmp_path / "dit", num_classes=10, vae=True, learned_variance=True)
    data = digits()
    gen = load_dit(
        data,
        **generator_settings("dit_xl2", path=str(folder), vae=None, resolution=16, class_space="dataset"),
    )
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
        load_dit(digits(), **generator_settings("dit_xl2", path=str(folder), vae=None, resolution=16))


def test_missing_hub_model_is_one_line(tmp_path):
    with pytest.raises(UserError, match="generator.path"):
        load_dit(
            digits(),
            **generator_settings("dit_xl2", path="facebook/DiT-XL-2-256", vae=None, model_dir=str(tmp_path)),
        )


# -- the hub's DiT folder layout (ddcore/generators/hub.py) -----------------------------------
def test_hub_folder_with_legacy_class_and_bin_weights_loads_as_dit(tmp_path):
    """facebook/DiT-XL-2-256: transformer/config.json says Transformer2DModel, weights are .bin."""
    folder = save_hub_layout(tmp_path, DIT_XL2_256)
    transformer = folder / "transformer"
    assert json.loads((transformer / "config.json").read_text())["_class_name"] == "Transformer2DModel"
    assert [f.name for f in transformer.glob("diffusion_pytorch_model.*")] == ["diffusion_pytorch_model.bin"]
    assert (folder / "model_index.json").is_file()
    gen = load_dit(
        imagenet_data(), **generator_settings("dit_xl2", path=str(folder), vae=None, resolution=RES)
    )
    assert isinstance(gen.denoiser, DiTTransformer2DModel) and gen.null_label == 1000
    saved = torch.load(transformer / "diffusion_pytorch_model.bin", weights_only=True)
    loaded = gen.denoiser.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(loaded[k], v) for k, v in saved.items())


def test_generator_dit_xl2_samples_on_the_official_dit_grids(tmp_path):
    folder = save_hub_layout(tmp_path, DIT_XL2_256)
    gen = load_dit(  # the YAML's timestep_spacing
        imagenet_data(), **generator_settings("dit_xl2", path=str(folder), vae=None, resolution=RES)
    )
    assert gen.timestep_spacing == {"ddpm": "linspace", "ddim": "leading"}
    ddpm = make_scheduler(gen, "ddpm", 50).timesteps.tolist()
    assert ddpm[:3] == [999, 979, 958] and ddpm[-1] == 0  # create_diffusion("50")
    assert make_scheduler(gen, "ddim", 50).timesteps.tolist()[:2] == [980, 960]  # "ddim50"
    kept = load_dit(
        imagenet_data(),
        **generator_settings("dit_xl2", path=str(folder), vae=None, resolution=RES, timestep_spacing=None),
    )
    assert kept.timestep_spacing is None  # None: the checkpoint's own scheduler config


def test_missing_vae_names_generator_vae(tmp_path):
    folder = save_hub_layout(tmp_path, DIT_XL2_256)
    missing = tmp_path / "no-such-vae"
    with pytest.raises(UserError) as err:
        load_dit(
            imagenet_data(),
            **generator_settings("dit_xl2", path=str(folder), vae=str(missing), resolution=RES),
        )
    msg = str(err.value)
    assert str(missing) in msg and "generator.vae" in msg and "generator.path" not in msg
    assert "\n" not in msg
    with pytest.raises(UserError) as err:  # a hub id that is neither downloaded nor reachable
        load_dit(
            imagenet_data(),
            **generator_settings("dit_xl2", path=str(folder), vae=SD_VAE_FT_MSE, model_dir=str(tmp_path)),
        )
    assert "generator.vae=" in str(err.value) and "generator.path" not in str(err.value)

"""The hub ids the framework names (ddcore/generators/hub.py), each in its hub folder layout.

For every entry a tiny model is saved in exactly that layout (subfolders, ``_class_name``s,
weight files, ``model_index.json``) under ``<model_dir>/<org>/<name>`` and loaded offline, by
its hub id, through the loader that uses it, as a download into ``paths.model_dir`` would be.
"""

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DiTTransformer2DModel,
    PNDMScheduler,
    Transformer2DModel,
    UNet2DConditionModel,
)
from omegaconf import OmegaConf
from transformers import CLIPTextConfig, CLIPTextModel

import ddcore  # noqa: F401  (torchvision import fix before diffusers/transformers)
from ddcore.data.base import ImageClassificationData, TensorSource
from ddcore.data.classes import subset_wnids, wnid_names
from ddcore.errors import UserError
from ddcore.generators.dit import load_dit
from ddcore.generators.hub import DIT_XL2_256, HUB_MODELS, SD_VAE_FT_MSE
from ddcore.generators.stable_diffusion import load_stable_diffusion
from experiments.rehearse import SMALL
from tests.configs import generator_settings
from tests.test_generators_pretrained import tiny_vae, write_tokenizer

RES = 16  # pixels; the tiny VAEs downsample by 2 -> 8x8 latents
CONF = Path(__file__).resolve().parents[1] / "conf" / "generator"
ROLE_OF_TARGET = {"load_dit": "dit", "load_stable_diffusion": "sd"}


def imagenet_data(num_classes=2):
    wnids = subset_wnids("imagenette")[:num_classes]
    names, prompts = wnid_names(wnids)
    images = torch.randint(0, 256, (2 * num_classes, 3, RES, RES), dtype=torch.uint8)
    source = TensorSource(images, torch.arange(num_classes).repeat(2))
    return ImageClassificationData("tinynette", wnids, names, RES, 3, source, source, prompts=prompts)


# -- tiny components, by the _class_name the hub's config gives -----------------------------
def tiny_transformer(num_classes):
    """The hub's DiT transformer: the legacy Transformer2DModel class (2 layers, 8x8 latents)."""
    return Transformer2DModel(
        sample_size=RES // 2,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        in_channels=4,
        out_channels=8,  # eps + learned variance, as DiT-XL/2
        patch_size=2,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=num_classes,
        norm_type="ada_norm_zero",
        norm_elementwise_affine=False,
    )


def tiny_unet():  # the toy sizes of `make rehearse --small` (8x8 latents)
    return UNet2DConditionModel(in_channels=4, out_channels=4, **SMALL.unet)


def tiny_text_encoder():
    config = CLIPTextConfig(
        **SMALL.text,
        vocab_size=100,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config)


def save_model(model, folder: Path, weights: str | None):
    model.save_pretrained(
        folder, **({} if weights is None else {"safe_serialization": weights.endswith("safetensors")})
    )


BUILDERS = {  # _class_name -> (folder, weights file, model classes) -> writes the component
    "Transformer2DModel": lambda f, w, n: save_model(tiny_transformer(n), f, w),
    "AutoencoderKL": lambda f, w, n: save_model(tiny_vae(), f, w),
    "UNet2DConditionModel": lambda f, w, n: save_model(tiny_unet(), f, w),
    "CLIPTextModel": lambda f, w, n: tiny_text_encoder().save_pretrained(f),
    "CLIPTokenizer": lambda f, w, n: write_tokenizer(f),
    "DDIMScheduler": lambda f, w, n: DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon", clip_sample=False
    ).save_pretrained(f),
    "PNDMScheduler": lambda f, w, n: PNDMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True
    ).save_pretrained(f),
}
LIBRARY = {"CLIPTextModel": "transformers", "CLIPTokenizer": "transformers"}


def save_hub_layout(model_dir: Path, hub_id: str, num_classes: int = 1000) -> Path:
    """A tiny model in ``hub_id``'s layout at ``<model_dir>/<hub_id>`` (hub.py's table)."""
    entry, root = HUB_MODELS[hub_id], model_dir / hub_id
    torch.manual_seed(0)
    for sub, class_name in entry.components.items():
        folder = root / sub if sub else root
        weights = entry.weights.get(sub)
        BUILDERS[class_name](folder, weights, num_classes)
        config = folder / ("scheduler_config.json" if "Scheduler" in class_name else "config.json")
        if config.is_file():  # the config names the class the hub's does
            saved = json.loads(config.read_text())
            assert saved.get("_class_name", (saved.get("architectures") or [None])[0]) == class_name
        assert weights is None or (folder / weights).is_file(), f"{hub_id}/{sub}: no {weights}"
    if entry.pipeline:
        index = {"_class_name": entry.pipeline, "_diffusers_version": "0.12.0"}
        index.update({sub: [LIBRARY.get(c, "diffusers"), c] for sub, c in entry.components.items()})
        (root / "model_index.json").write_text(json.dumps(index))
    return root


def load_by_role(hub_id: str, model_dir: Path, data):
    """Load ``hub_id`` by its id through the loader argument its table role names."""
    role = HUB_MODELS[hub_id].role
    if role == "sd":
        return load_stable_diffusion(
            data, **generator_settings("sd15", path=hub_id, resolution=RES, model_dir=str(model_dir))
        )
    if role == "vae":  # the VAE decodes a DiT's latents
        save_hub_layout(model_dir, DIT_XL2_256)
        return load_dit(
            data,
            **generator_settings(
                "dit_xl2", path=DIT_XL2_256, vae=hub_id, resolution=RES, model_dir=str(model_dir)
            ),
        )
    return load_dit(
        data, **generator_settings("dit_xl2", path=hub_id, vae=None, resolution=RES, model_dir=str(model_dir))
    )


@pytest.mark.parametrize("hub_id", list(HUB_MODELS))
def test_each_hub_layout_loads_by_its_id_from_model_dir(hub_id, tmp_path):
    save_hub_layout(tmp_path, hub_id)
    data = imagenet_data()
    gen = load_by_role(hub_id, tmp_path, data)
    latents = gen.encode(data.train.load([0, 1]))
    assert latents.shape == (2, *gen.latent_shape) == (2, 4, RES // 2, RES // 2)
    assert gen.decode(latents).shape == (2, 3, RES, RES)
    cond = torch.cat([gen.condition(torch.tensor([0, 1])), gen.null_condition(2)])
    out = gen.denoise(torch.randn(4, *gen.latent_shape), torch.tensor(500), cond)
    assert out.shape[0] == 4 and torch.isfinite(out).all()
    if HUB_MODELS[hub_id].role != "sd":  # the legacy Transformer2DModel read as a DiT
        assert isinstance(gen.denoiser, DiTTransformer2DModel) and gen.null_label == 1000
        assert gen.learned_variance


def configured_hub_ids():
    """(file, key, value, role) for every hub id a generator config names (the loaders have no
    defaults: ``tests/test_configs.py``)."""
    for file in sorted(CONF.glob("*.yaml")):
        cfg = OmegaConf.to_container(OmegaConf.load(file), resolve=False)
        target = str(cfg.get("_target_", "")).rsplit(".", 1)[-1]
        for key in ("path", "vae"):
            value = cfg.get(key)
            if isinstance(value, str) and "${" not in value:
                yield file.name, key, value, "vae" if key == "vae" else ROLE_OF_TARGET.get(target)


def test_configs_name_only_listed_hub_ids():
    named = list(configured_hub_ids())
    assert {value for *_, value, _ in named} >= {DIT_XL2_256, SD_VAE_FT_MSE}
    for where, key, value, role in named:
        assert value in HUB_MODELS, f"{where}: {key}={value} is not in ddcore/generators/hub.py"
        assert HUB_MODELS[value].role == role, f"{where}: {key}={value} is a {HUB_MODELS[value].role}"


def test_sd15_names_the_maintained_mirror():
    assert OmegaConf.load(CONF / "sd15.yaml").path == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert "runwayml/stable-diffusion-v1-5" not in HUB_MODELS  # deleted from the hub in 2024


def test_dit_xl2_config_reads_its_hub_ids_from_paths_model_dir(make_cfg, tmp_path):
    from ddapp.stages import build_generator
    from ddcore.data.small import digits

    model_dir = tmp_path / "models"
    save_hub_layout(model_dir, DIT_XL2_256, num_classes=10)
    save_hub_layout(model_dir, SD_VAE_FT_MSE)
    cfg = make_cfg(
        "generator=dit_xl2",
        "generator.class_space=dataset",
        f"generator.resolution={RES}",
        f"paths.model_dir={model_dir}",
    )
    gen = build_generator(cfg, digits())
    assert gen.num_classes == 10 and gen.latent_shape == (4, RES // 2, RES // 2)
    assert gen.timestep_spacing == {"ddpm": "linspace", "ddim": "leading"}


def test_dd_model_dir_is_read_when_no_model_dir_is_given(tmp_path, monkeypatch):
    sd = next(i for i, m in HUB_MODELS.items() if m.role == "sd")
    save_hub_layout(tmp_path, sd)
    monkeypatch.setenv("DD_MODEL_DIR", str(tmp_path))
    gen = load_stable_diffusion(imagenet_data(), **generator_settings("sd15", resolution=RES, model_dir=None))
    assert gen.latent_shape == (4, RES // 2, RES // 2)


def test_hub_id_missing_from_model_dir_says_where_to_download_it(tmp_path):
    with pytest.raises(UserError) as err:
        load_dit(
            imagenet_data(),
            **generator_settings("dit_xl2", path=DIT_XL2_256, vae=None, model_dir=str(tmp_path)),
        )
    msg = str(err.value)
    assert f"not in {tmp_path / DIT_XL2_256}" in msg and "hub is unreachable" in msg
    assert f"--local-dir {tmp_path / DIT_XL2_256}" in msg and "generator.path" in msg
    assert "\n" not in msg

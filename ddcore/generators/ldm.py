"""Class-conditional latent diffusion (LDM-style U-Net) from a diffusers-format folder.

The folder holds ``unet/`` (a UNet2DModel with ``num_class_embeds`` = model classes + 1, the last
index being the null class for classifier-free guidance), ``scheduler/`` and either ``vae/``
(AutoencoderKL) or ``vqvae/`` (VQModel, as CompVis' LDM checkpoints use).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel, VQModel

from ddcore.data.base import ImageClassificationData
from ddcore.errors import UserError
from ddcore.generators.base import ClassConditionalGenerator, VAECodec
from ddcore.generators.dit import map_classes
from ddcore.generators.pretrained import load_component, torch_dtype


class VQCodec(VAECodec):
    """A diffusers VQModel: latent = pre-quantisation encoder output * scaling factor.

    Subclasses VAECodec so the generator finds the autoencoder's image channels in
    ``codec.vae.config``. The scale is the checkpoint's ``scaling_factor`` when its config sets
    one, else 1.0 (LDM's VQ checkpoints train on unscaled latents; diffusers would otherwise
    fill in its SD default of 0.18215).
    """

    def __init__(self, vq: VQModel, scaling_factor: float | None = None):
        if scaling_factor is None:
            defaulted = "scaling_factor" in vq.config.get("_use_default_values", [])
            scaling_factor = 1.0 if defaulted else vq.config.scaling_factor
        super().__init__(vq, scaling_factor)

    def encode(self, images01: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(images01 * 2.0 - 1.0).latents * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        images = self.vae.decode(latents / self.scaling_factor).sample  # quantises first
        return ((images + 1.0) / 2.0).clamp(0.0, 1.0)

    def latent_shape(self, channels: int, resolution: int) -> tuple[int, int, int]:
        cfg = self.vae.config
        factor = 2 ** (len(cfg.block_out_channels) - 1)
        return cfg.vq_embed_dim or cfg.latent_channels, resolution // factor, resolution // factor


def load_class_ldm(
    data: ImageClassificationData,
    path: str,
    class_space: str = "imagenet1k",
    resolution: int = 256,
    cfg_scale: float = 3.0,
    dtype: str = "float32",
    name: str = "ldm",
    timestep_spacing: dict | None = None,
) -> ClassConditionalGenerator:
    """A class-conditional LDM; ``class_space`` maps labels to model classes (see dit.map_classes)."""
    dt = torch_dtype(dtype)
    unet = load_component(UNet2DModel, path, "unet", torch_dtype=dt)
    embeds = unet.config.num_class_embeds
    if not embeds or embeds < 2:
        raise UserError(
            f"generator {name}: {path}/unet is not class-conditional (num_class_embeds="
            f"{embeds}); use a U-Net with classes + 1 class embeddings"
        )
    model_classes = embeds - 1  # the last embedding is the null class
    if (Path(path) / "vqvae").is_dir():
        codec = VQCodec(load_component(VQModel, path, "vqvae", torch_dtype=dt))
    else:
        codec = VAECodec(load_component(AutoencoderKL, path, "vae", torch_dtype=dt))
    scheduler = load_component(DDPMScheduler, path, "scheduler")
    return ClassConditionalGenerator(
        unet,
        codec,
        dict(scheduler.config),
        resolution=resolution,
        image_channels=data.channels,
        cfg_scale=cfg_scale,
        model_classes=model_classes,
        null_label=model_classes,
        class_map=map_classes(data, model_classes, class_space, name),
        name=name,
        timestep_spacing=timestep_spacing,
    )

"""Class-conditional latent diffusion (LDM-style U-Net) from a diffusers-format folder.

Two layouts, told apart by the ``_class_name`` in ``unet/config.json``:

- ``unet/`` a UNet2DModel with ``num_class_embeds`` = model classes + 1 (the last index is the
  null class for classifier-free guidance): the class embedding is added to the timestep
  embedding (diffusers' class-conditional U-Net, as ``unet_tiny`` trains).
- ``unet/`` a UNet2DConditionModel + ``class_embedder/``: CompVis' cin256 LDM
  (``configs/latent-diffusion/cin256-v2.yaml``: ``conditioning_key: crossattn``, a
  ``ClassEmbedder`` with ``n_classes: 1001``, ``embed_dim: 512``, U-Net ``context_dim: 512``).
  The class index becomes a one-token context for the U-Net's cross-attention; index 1000 is
  the null class the authors sample CFG with. CompVis publishes this model only as an
  original-format checkpoint (no diffusers folder on the hub): convert its U-Net to
  UNet2DConditionModel (``cross_attention_dim`` 512), its first stage to ``vqvae/``, and save
  ``cond_stage_model.embedding.weight`` as ``class_embedder/`` (``LDMClassEmbedder``, weight
  ``embedding.weight``).

Beside ``unet/``: ``scheduler/`` and either ``vae/`` (AutoencoderKL) or ``vqvae/`` (VQModel, as
CompVis' LDM checkpoints use).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, ModelMixin, UNet2DConditionModel, UNet2DModel, VQModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

from ddcore.data.base import ImageClassificationData
from ddcore.errors import UserError
from ddcore.generators.base import ClassConditionalGenerator, VAECodec, map_classes
from ddcore.generators.pretrained import load_component, load_config, resolve_model, torch_dtype

LAYOUTS = (
    "unet/ UNet2DModel with num_class_embeds = classes + 1, or unet/ UNet2DConditionModel with "
    "class_embedder/ (CompVis cin256, converted; see ddcore/generators/ldm.py)"
)


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


class LDMClassEmbedder(ModelMixin, ConfigMixin):
    """CompVis' ``ClassEmbedder`` (``ldm.modules.encoders.modules``): class index -> a one-token
    context ``(n, 1, embed_dim)`` for the U-Net's cross-attention."""

    @register_to_config
    def __init__(self, n_classes: int = 1001, embed_dim: int = 512):
        super().__init__()
        self.embedding = nn.Embedding(n_classes, embed_dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding(labels)[:, None]


class CrossAttentionClassGenerator(ClassConditionalGenerator):
    """A U-Net conditioned on class indices through cross-attention (LDM's ``crossattn``)."""

    def __init__(self, *args, class_embedder: LDMClassEmbedder, **kwargs):
        super().__init__(*args, **kwargs)
        self.class_embedder = class_embedder.eval().requires_grad_(False)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        t = t.expand(x.shape[0]) if t.ndim else t.repeat(x.shape[0])
        context = self.class_embedder(cond.to(self.class_map.device)).to(self.dtype)
        return self.denoiser(x.to(self.dtype), t.to(x.device), encoder_hidden_states=context).sample.float()


def load_class_ldm(
    data: ImageClassificationData,
    *,
    path: str,
    class_space: str,
    resolution: int,
    cfg_scale: float,
    dtype: str,
    name: str,
    timestep_spacing: dict | None,
    model_dir: str | None,
) -> ClassConditionalGenerator:
    """A class-conditional LDM in either layout (module docstring); ``class_space`` maps labels
    to model classes (see base.map_classes). Settings and their defaults: ``conf/generator/ldm.yaml``."""
    dt = torch_dtype(dtype)
    folder = resolve_model(path, model_dir)
    found = load_config(folder, "unet", model_dir=model_dir).get("_class_name")
    if found == "UNet2DConditionModel":
        unet, embedder = load_cross_attention_unet(folder, name, dt)
        embeds, extra = embedder.config.n_classes, {"class_embedder": embedder}
    elif found == "UNet2DModel":
        unet = load_component(UNet2DModel, folder, "unet", torch_dtype=dt)
        embeds, extra = unet.config.num_class_embeds, {}
    else:
        raise UserError(f"generator {name}: {folder}/unet holds a {found}; supported: {LAYOUTS}")
    if not embeds or embeds < 2:
        raise UserError(
            f"generator {name}: {folder}/unet is not class-conditional (num_class_embeds="
            f"{embeds}); supported: {LAYOUTS}"
        )
    model_classes = embeds - 1  # the last embedding is the null class
    if (Path(folder) / "vqvae").is_dir():
        codec = VQCodec(load_component(VQModel, folder, "vqvae", torch_dtype=dt))
    else:
        codec = VAECodec(load_component(AutoencoderKL, folder, "vae", torch_dtype=dt))
    scheduler = load_component(DDPMScheduler, folder, "scheduler")
    make = CrossAttentionClassGenerator if extra else ClassConditionalGenerator
    return make(
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
        **extra,
    )


def load_cross_attention_unet(
    folder: str, name: str, dt: torch.dtype
) -> tuple[UNet2DConditionModel, LDMClassEmbedder]:
    """The cin256 layout: the U-Net and the class embedder whose output is its context."""
    if Path(folder).is_dir() and not (Path(folder) / "class_embedder").is_dir():
        raise UserError(
            f"generator {name}: {folder}/unet is a UNet2DConditionModel (cross-attention) but the "
            f"folder has no class_embedder/ to make its context from class labels; supported: {LAYOUTS}"
        )
    unet = load_component(UNet2DConditionModel, folder, "unet", torch_dtype=dt)
    embedder = load_component(LDMClassEmbedder, folder, "class_embedder", torch_dtype=dt)
    if embedder.config.embed_dim != unet.config.cross_attention_dim:
        raise UserError(
            f"generator {name}: {folder}/class_embedder makes {embedder.config.embed_dim}-d "
            f"contexts but the U-Net's cross_attention_dim is {unet.config.cross_attention_dim}"
        )
    return unet, embedder

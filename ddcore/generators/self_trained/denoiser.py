"""The class-conditional denoiser a self-trained generator learns: a DiT or a U-Net, with one
extra (null) class embedding for classifier-free guidance."""

from __future__ import annotations

from diffusers import DiTTransformer2DModel, UNet2DModel

from ddcore.errors import UserError
from ddcore.generators.dit import build_dit

FAMILIES = ("dit", "unet")


def build_denoiser(family: str, channels: int, resolution: int, num_classes: int, arch: dict):
    """A class-conditional denoiser with one extra (null) class embedding for CFG."""
    if family == "dit":
        model = build_dit(channels, resolution, num_classes, **arch)
        for module in model.modules():  # we drop labels ourselves, with an explicit generator
            if hasattr(module, "token_drop"):
                module.dropout_prob = 0.0
        return model
    if family == "unet":
        return UNet2DModel(
            sample_size=resolution,
            in_channels=channels,
            out_channels=channels,
            num_class_embeds=num_classes + 1,
            **arch,
        )
    raise UserError(f"unknown generator.family {family!r} (use one of: {', '.join(FAMILIES)})")


def null_label_of(denoiser) -> int:
    if isinstance(denoiser, DiTTransformer2DModel):
        return int(denoiser.config.num_embeds_ada_norm)
    return int(denoiser.config.num_class_embeds) - 1

"""One small interface over every diffusion generator the methods use.

A generator maps images to latents and back (``encode``/``decode``, images in [0, 1]), builds
conditional and null conditioning for dataset labels (``condition``/``null_condition``; the two
concatenate along the batch, so CFG runs as one batched forward), and predicts noise
(``denoise`` returns the raw model output, ``split_output`` separates eps from a learned
variance). The sampler and the methods see only this class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ddcore.errors import UserError

if TYPE_CHECKING:
    from ddcore.data.base import ImageClassificationData


class PixelIdentityCodec(nn.Module):
    """Pixel space: a latent is the image rescaled to [-1, 1]."""

    def encode(self, images01: torch.Tensor) -> torch.Tensor:
        return images01 * 2.0 - 1.0

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((latents + 1.0) / 2.0).clamp(0.0, 1.0)

    def latent_shape(self, channels: int, resolution: int) -> tuple[int, int, int]:
        return channels, resolution, resolution


class VAECodec(nn.Module):
    """A diffusers VAE: latent = ``latent_dist.mean * scaling_factor`` (as MGD^3's official code)."""

    def __init__(self, vae: nn.Module, scaling_factor: float | None = None):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.scaling_factor = float(scaling_factor or getattr(vae.config, "scaling_factor", 1.0))

    def encode(self, images01: torch.Tensor) -> torch.Tensor:
        dist = self.vae.encode(images01 * 2.0 - 1.0).latent_dist
        return dist.mean * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        images = self.vae.decode(latents / self.scaling_factor).sample
        return ((images + 1.0) / 2.0).clamp(0.0, 1.0)

    def latent_shape(self, channels: int, resolution: int) -> tuple[int, int, int]:
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return self.vae.config.latent_channels, resolution // factor, resolution // factor


Codec = PixelIdentityCodec | VAECodec  # what a generator's latents are: pixels or a VAE's


class DiffusionGenerator(nn.Module):
    """Shared behaviour; subclasses say how to condition and call the denoiser.

    Args:
        denoiser: a diffusers model predicting eps (optionally eps + variance channels).
        codec: pixel space or a VAE.
        scheduler_config: the training noise schedule (a diffusers scheduler config dict).
        resolution: pixel resolution the generator works at.
        image_channels: channels of decoded images (1 for grayscale sets, 3 for RGB).
        cfg_scale: default classifier-free guidance scale.
        cfg_channels: CFG only on the first k latent channels (DiT-XL/2 uses 3), None = all.
        timestep_spacing: the family's official sampling grid per sampler, e.g. ``{"ddpm":
            "linspace", "ddim": "leading"}`` for DiT; None keeps the checkpoint's scheduler
            config (``method.timestep_spacing=auto`` reads this; ``ddcore.sampling``).
    """

    def __init__(
        self,
        denoiser: nn.Module,
        codec: Codec,
        scheduler_config: dict,
        resolution: int,
        image_channels: int,
        cfg_scale: float = 1.0,
        cfg_channels: int | None = None,
        name: str = "generator",
        timestep_spacing: dict | None = None,
    ):
        super().__init__()
        self.denoiser = denoiser.eval().requires_grad_(False)
        self.codec = codec
        self.scheduler_config = dict(scheduler_config)
        self.resolution = int(resolution)
        self.image_channels = int(image_channels)
        self.cfg_scale = float(cfg_scale)
        self.cfg_channels = cfg_channels
        self.name = name
        self.timestep_spacing = dict(timestep_spacing) if timestep_spacing else None

    # -- shapes ---------------------------------------------------------------------------
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        channels = self.denoiser.config.in_channels
        return self.codec.latent_shape(channels, self.resolution)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    @property
    def pixel_space(self) -> bool:
        return isinstance(self.codec, PixelIdentityCodec)

    @property
    def learned_variance(self) -> bool:
        cfg = self.denoiser.config
        return (cfg.out_channels or cfg.in_channels) == 2 * cfg.in_channels

    # -- latents --------------------------------------------------------------------------
    @torch.no_grad()
    def encode(
        self, images01: torch.Tensor, batch_size: int = 64, resolution: int | None = None
    ) -> torch.Tensor:
        """Images in [0, 1] at any resolution -> latents, resized to ``resolution`` first
        (default: the generator's own; patch selection encodes at its scoring size)."""
        from ddcore.data.base import resize_images

        out = []
        for chunk in images01.split(batch_size):
            chunk = resize_images(chunk.to(self.device, torch.float32), resolution or self.resolution)
            chunk = self._match_channels(chunk, self._codec_channels())
            out.append(self.codec.encode(chunk.to(self.dtype)).float())
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        out = [
            self.codec.decode(chunk.to(self.device, self.dtype)).float()
            for chunk in latents.split(batch_size)
        ]
        return self._match_channels(torch.cat(out), self.image_channels)

    def _codec_channels(self) -> int:
        if isinstance(self.codec, VAECodec):
            return self.codec.vae.config.in_channels
        return self.denoiser.config.in_channels

    @staticmethod
    def _match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
        if images.shape[1] == channels:
            return images
        if channels == 1:
            return images.mean(dim=1, keepdim=True)
        return images.expand(-1, channels, -1, -1)

    # -- conditioning and noise prediction (subclasses) -----------------------------------
    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    def condition(self, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def null_condition(self, n: int) -> torch.Tensor:
        raise NotImplementedError

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def split_output(self, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(eps, variance channels or None) from a raw denoiser output."""
        if self.learned_variance:
            eps, var = output.chunk(2, dim=1)
            return eps, var
        return output, None


class ClassConditionalGenerator(DiffusionGenerator):
    """DiT or U-Net conditioned on a class index; the null class index comes from the model.

    ``class_map[i]`` is the generator class of dataset label i (identity for self-trained
    generators, ImageNet-1k indices for DiT-XL/2 on an ImageNet subset).
    """

    def __init__(
        self, *args, model_classes: int, null_label: int, class_map: list[int] | None = None, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.model_classes = int(model_classes)
        self.null_label = int(null_label)
        class_map = list(range(self.model_classes)) if class_map is None else list(class_map)
        self.register_buffer("class_map", torch.as_tensor(class_map, dtype=torch.long), persistent=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_map)

    def condition(self, labels: torch.Tensor) -> torch.Tensor:
        return self.class_map[labels.to(self.class_map.device)]

    def null_condition(self, n: int) -> torch.Tensor:
        return torch.full((n,), self.null_label, dtype=torch.long, device=self.class_map.device)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        t = t.expand(x.shape[0]) if t.ndim else t.repeat(x.shape[0])
        return self.denoiser(x.to(self.dtype), t.to(x.device), class_labels=cond).sample.float()


def imagenet_class_map(class_ids: list[str], generator_name: str) -> list[int]:
    """Dataset labels -> ImageNet-1k indices, for generators trained on ImageNet-1k."""
    from ddcore.data.classes import imagenet1k_wnids

    index = {wnid: i for i, wnid in enumerate(imagenet1k_wnids())}
    missing = [c for c in class_ids if c not in index]
    if missing:
        raise UserError(
            f"generator {generator_name} knows ImageNet-1k classes but the dataset has "
            f"{len(missing)} that are not ImageNet wnids (e.g. {missing[0]!r}); use a generator "
            "trained on this dataset, e.g. generator=dit_tiny"
        )
    return [index[c] for c in class_ids]


def map_classes(data: ImageClassificationData, model_classes: int, class_space: str, name: str) -> list[int]:
    """Dataset label -> model class, checked against the model's class count: ``imagenet1k`` (by
    wnid) or ``dataset`` (identity, the counts must match)."""
    if class_space == "imagenet1k":
        return imagenet_class_map(data.class_ids, name)
    if class_space != "dataset":
        raise UserError(f"unknown generator.class_space {class_space!r} (use imagenet1k or dataset)")
    if model_classes != data.num_classes:
        raise UserError(
            f"generator {name} has {model_classes} classes but dataset {data.name} has "
            f"{data.num_classes} (use a generator trained on {data.name})"
        )
    return list(range(model_classes))

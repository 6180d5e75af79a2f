"""Stable Diffusion v1.x as a generator: a text-conditioned U-Net over a KL-VAE latent.

Each dataset class is a prompt (``data.prompts`` through ``prompt_template``); its CLIP
last-hidden-state embedding is the condition. The null condition is the embedding of
``null_prompt``: "" for classifier-free guidance (MGD^3), "An image of ." for the patch-selection
score. Embeddings are computed once per generator and cached.
"""

from __future__ import annotations

import re

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from ddcore.data.base import ImageClassificationData
from ddcore.errors import UserError
from ddcore.generators.base import Codec, DiffusionGenerator, VAECodec
from ddcore.generators.pretrained import component_error, load_component, resolve_model, torch_dtype


class TextConditionalGenerator(DiffusionGenerator):
    """A U-Net conditioned on text embeddings (``encoder_hidden_states``).

    Args (beyond DiffusionGenerator's):
        text_encoder: a CLIP text model; its last hidden states are the condition.
        tokenizer: the text encoder's tokenizer.
        prompts: one prompt per dataset label.
        null_prompt: the unconditional prompt.
    """

    def __init__(
        self,
        denoiser: nn.Module,
        codec: Codec,
        scheduler_config: dict,
        *,
        text_encoder: nn.Module,
        tokenizer,
        prompts: list[str],
        null_prompt: str = "",
        **kwargs,
    ):
        super().__init__(denoiser, codec, scheduler_config, **kwargs)
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.prompts = list(prompts)
        self.null_prompt = null_prompt
        # Filled on first use; buffers so that .to(device) moves them with the model.
        self.register_buffer("class_embeddings", None, persistent=False)
        self.register_buffer("null_embedding", None, persistent=False)

    @property
    def num_classes(self) -> int:
        return len(self.prompts)

    @torch.no_grad()
    def embed(self, prompts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Last hidden states of the text encoder, (n, tokens, hidden), padded to max length."""
        max_length = min(self.tokenizer.model_max_length, self.text_encoder.config.max_position_embeddings)
        device = next(self.text_encoder.parameters()).device
        out = []
        for start in range(0, len(prompts), batch_size):
            ids = self.tokenizer(
                prompts[start : start + batch_size],
                padding="max_length",
                max_length=max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            out.append(self.text_encoder(ids.to(device))[0])
        return torch.cat(out)

    def condition(self, labels: torch.Tensor) -> torch.Tensor:
        if self.class_embeddings is None:
            self.class_embeddings = self.embed(self.prompts)
        cache = self.class_embeddings
        return cache[labels.to(cache.device)].to(self.device, self.dtype)

    def null_condition(self, n: int) -> torch.Tensor:
        if self.null_embedding is None:
            self.null_embedding = self.embed([self.null_prompt])
        return self.null_embedding.to(self.device, self.dtype).expand(n, -1, -1)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        t = t.expand(x.shape[0]) if t.ndim else t.repeat(x.shape[0])
        return self.denoiser(
            x.to(self.dtype), t.to(x.device), encoder_hidden_states=cond.to(self.dtype)
        ).sample.float()


def load_stable_diffusion(
    data: ImageClassificationData,
    *,
    path: str,
    resolution: int,
    cfg_scale: float,
    prompt_template: str,
    null_prompt: str,
    dtype: str,
    name: str,
    timestep_spacing: dict | None,
    model_dir: str | None,
) -> TextConditionalGenerator:
    """Stable Diffusion from a hub id or a diffusers folder with ``unet/``, ``vae/``,
    ``text_encoder/``, ``tokenizer/`` and ``scheduler/``; one prompt per dataset class.
    ``model_dir``: where downloaded hub ids are looked for first (``pretrained.resolve_model``).
    Settings and their defaults: ``conf/generator/sd15.yaml``."""
    prompts = class_prompts(data, prompt_template, name)
    dt = torch_dtype(dtype)
    unet = load_component(UNet2DConditionModel, path, "unet", torch_dtype=dt, model_dir=model_dir)
    vae = load_component(AutoencoderKL, path, "vae", torch_dtype=dt, model_dir=model_dir)
    text_encoder = load_component(CLIPTextModel, path, "text_encoder", dtype=dt, model_dir=model_dir)
    tokenizer = load_tokenizer(path, model_dir)
    scheduler = load_component(DDPMScheduler, path, "scheduler", model_dir=model_dir)
    return TextConditionalGenerator(
        unet,
        VAECodec(vae),
        dict(scheduler.config),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        prompts=prompts,
        null_prompt=null_prompt,
        resolution=resolution,
        image_channels=data.channels,
        cfg_scale=cfg_scale,
        name=name,
        timestep_spacing=timestep_spacing,
    )


WNID = re.compile(r"n\d{8}")  # a WordNet id is no class name: "An image of n01440764" says nothing


def class_prompts(data: ImageClassificationData, template: str, name: str) -> list[str]:
    """One prompt per label: the dataset's prompts (else class names) through ``template``."""
    base = list(getattr(data, "prompts", None) or getattr(data, "class_names", None) or [])
    if not base or not all(p.strip() and not WNID.fullmatch(p.strip()) for p in base):
        raise UserError(
            f"Stable Diffusion needs class names for prompts; dataset {data.name} has "
            f"none (give the dataset class names or prompts, or use a class-conditional "
            f"generator instead of generator={name})"
        )
    if "{}" not in template:
        raise UserError(
            f"generator.prompt_template {template!r} has no {{}} for the class name (e.g. 'An image of {{}}')"
        )
    return [template.format(p) for p in base]


def load_tokenizer(path: str, model_dir: str | None = None) -> CLIPTokenizer:
    """The CLIP tokenizer; transformers 5 silently builds an empty one when files are missing."""
    tokenizer = load_component(CLIPTokenizer, path, "tokenizer", model_dir=model_dir)
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        raise component_error(
            CLIPTokenizer,
            resolve_model(path, model_dir),
            "tokenizer",
            OSError("no vocab.json/merges.txt or tokenizer.json"),
        )
    return tokenizer

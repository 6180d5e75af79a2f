"""A self-trained generator's cache entry: its key (dataset identity + train-image digest +
generator config) and reading the entry back as a generator (``read_entry``: files that cannot be
read are a ``CacheUnreadable`` naming the entry)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from diffusers import AutoencoderKL, DDPMScheduler, DiTTransformer2DModel, UNet2DModel

from ddcore.data.base import ImageClassificationData
from ddcore.errors import CacheUnreadable
from ddcore.files import short_hash
from ddcore.generators.base import ClassConditionalGenerator, PixelIdentityCodec, VAECodec
from ddcore.generators.self_trained.denoiser import null_label_of


def train_digest(data: ImageClassificationData) -> str:
    """Content digest of the train split (images via ``ImageSource.digest``, and labels)."""
    images = data.train.digest(range(len(data.train)))
    labels = hashlib.sha256(data.train.labels.numpy().tobytes()).hexdigest()
    return hashlib.sha256(f"{images}:{labels}".encode()).hexdigest()


def cache_key(data: ImageClassificationData, spec: dict) -> str:
    identity = {
        "dataset": data.name,
        "description": data.description,
        "class_ids": data.class_ids,
        "resolution": data.resolution,
        "channels": data.channels,
        "n_train": len(data.train),
        "train_digest": train_digest(data),
        **spec,
    }
    return short_hash(identity, 12)  # also the shipped weights' folder names: keep its form


def load_saved(folder: Path, family: str):
    cls = DiTTransformer2DModel if family == "dit" else UNet2DModel
    return cls.from_pretrained(folder / "denoiser"), dict(DDPMScheduler.load_config(folder / "scheduler"))


def saved_generator(
    folder: Path,
    spec: dict,
    data: ImageClassificationData,
    cfg_scale: float,
    timestep_spacing: dict | None = None,
) -> ClassConditionalGenerator:
    denoiser, scheduler_config = load_saved(folder, spec["family"])
    codec = VAECodec(AutoencoderKL.from_pretrained(folder / "vae")) if "vae" in spec else PixelIdentityCodec()
    return ClassConditionalGenerator(
        denoiser,
        codec,
        scheduler_config,
        model_classes=data.num_classes,
        null_label=null_label_of(denoiser),
        resolution=spec["resolution"],
        image_channels=data.channels,
        cfg_scale=cfg_scale,
        name=spec["name"],
        timestep_spacing=timestep_spacing,
    )


def read_meta(generator_folder: Path) -> dict:
    return json.loads((Path(generator_folder) / "meta.json").read_text())


def read_entry(
    folder: Path, spec: dict, data: ImageClassificationData, cfg_scale: float, timestep_spacing: dict | None
) -> tuple[ClassConditionalGenerator, dict]:
    """The entry's generator and ``meta.json``; files that cannot be read raise ``CacheUnreadable``."""
    try:
        return saved_generator(folder, spec, data, cfg_scale, timestep_spacing), read_meta(folder)
    except Exception as exc:
        raise CacheUnreadable(folder, exc) from exc

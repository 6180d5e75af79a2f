"""The generator for (dataset, config): shipped, cached, or trained into the cache first
(``load_or_train``, the ``_target_`` of ``conf/generator_common/self_trained.yaml``)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ddcore.data.base import ImageClassificationData
from ddcore.errors import UserError
from ddcore.files import built_in_temp
from ddcore.generators.base import ClassConditionalGenerator, VAECodec
from ddcore.generators.probe import run_probe
from ddcore.generators.self_trained.cache import cache_key, read_entry, saved_generator
from ddcore.generators.self_trained.shipped import shipped_folder
from ddcore.generators.self_trained.training import train_denoiser

log = logging.getLogger(__name__)


def _plain(obj) -> dict:
    return OmegaConf.to_container(obj, resolve=True) if isinstance(obj, DictConfig) else dict(obj)


def load_or_train(
    data: ImageClassificationData,
    *,
    cache_dir: str,
    family: str,
    arch: dict,
    train: dict,
    schedule: dict,
    resolution: int,
    cfg_scale: float,
    seed: int,
    name: str,
    retrain: bool,
    trainer_kwargs: dict,
    probe_per_class: int,
    warn_below: float,
    overrides: dict | None,
    timestep_spacing: dict | None,
    vae: dict | None = None,
) -> ClassConditionalGenerator:
    """The generator for (dataset, config): shipped, cached, or trained first if neither.
    Settings and their defaults: ``conf/generator_common/self_trained.yaml`` and each
    self-trained generator's YAML (``dit_tiny``, ``unet_tiny``, ``ldm_tiny``); only a latent
    generator names a ``vae``.

    ``overrides`` replaces ``arch``/``train``/``probe_per_class``/``vae`` wholesale (``debug=tiny``
    uses it to shrink the model without touching configs of generators that have no such keys).
    ``vae``: settings of the framework's VAE (``ddcore/generators/vae.py``; ``arch``, ``train``,
    ``seed``): the denoiser then learns its latents (a latent generator, ``generator=ldm_tiny``).
    """
    overrides = _plain(overrides or {})
    arch, train = overrides.get("arch", arch), overrides.get("train", train)
    probe_per_class = overrides.get("probe_per_class", probe_per_class)
    vae = overrides.get("vae", vae)
    spec = {
        "name": name,
        "family": family,
        "arch": _plain(arch or {}),
        "train": _plain(train or {}),
        "schedule": _plain(schedule or {}),
        "resolution": resolution,
        "seed": seed,
    }
    if vae:  # only latent generators carry it: pixel generators keep their keys
        spec["vae"] = _plain(vae)
    grid = _plain(timestep_spacing) if timestep_spacing else None  # sampling grid (ddcore.sampling)
    folder = Path(cache_dir) / f"{data.name}-{name}-{cache_key(data, spec)}"
    if retrain and folder.exists():
        shutil.rmtree(folder)
    shipped = None if retrain or (folder / "meta.json").is_file() else shipped_folder(folder.name)
    if shipped is not None:
        log.info(f"using the shipped generator {shipped} (generator.retrain=true trains anew)")
        folder = shipped
    elif not (folder / "meta.json").is_file():
        codec = latent_codec(data, spec, cache_dir, trainer_kwargs)
        _train_into(folder, data, spec, _plain(trainer_kwargs or {}), probe_per_class, cfg_scale, grid, codec)
    else:
        log.info(f"reusing trained generator {folder}")
    generator, meta = read_entry(folder, spec, data, cfg_scale, grid)
    if meta.get("class_ids") != data.class_ids:
        raise UserError(
            f"cached generator {folder} was trained on other classes than "
            f"{data.name} has (delete the folder or use generator.retrain=true)"
        )
    generator.folder = folder
    generator.train_meta = {k: v for k, v in meta.items() if k not in ("spec", "class_ids")}
    generator.sample_accuracy = meta.get("sample_accuracy")
    generator.sample_warning = sample_warning(generator.sample_accuracy, warn_below, name, data)
    if generator.sample_warning:
        log.warning(generator.sample_warning)
    return generator


def sample_warning(
    accuracy: float | None, threshold: float, name: str, data: ImageClassificationData
) -> str | None:
    """One line when too few samples look like their class (None when fine or not probed)."""
    if accuracy is None or accuracy >= threshold:
        return None
    return (
        f"generator {name}: only {accuracy:.1%} of its samples are recognised as their class "
        f"by a probe trained on real {data.name} (generator.warn_below={threshold}); sets "
        "distilled from it will be off-class (train longer: generator.train.epochs / "
        "max_minutes)"
    )


def latent_codec(data, spec: dict, cache_dir: str, trainer_kwargs) -> VAECodec | None:
    """The VAE codec a latent generator trains on (trained and cached first), else None."""
    if "vae" not in spec:
        return None
    from ddcore.generators.vae import load_or_train_vae

    vae, meta = load_or_train_vae(
        data,
        cache_dir=str(Path(cache_dir) / "vaes"),
        trainer_kwargs=_plain(trainer_kwargs or {}),
        **spec["vae"],
    )
    codec = VAECodec(vae)
    codec.meta = meta
    return codec


def _train_into(folder: Path, data, spec, trainer_kwargs, probe_per_class, cfg_scale, grid, codec=None):
    """Train in a temporary folder and rename it at the end: a killed or failed run leaves no
    cache entry and no temp folder, and a process that waited for another one training the same
    entry trains nothing (``built_in_temp``)."""
    with built_in_temp(folder, "generator.cache_dir") as tmp:
        if tmp is None:
            return
        meta = {
            "spec": spec,
            "dataset": data.name,
            "class_ids": data.class_ids,
            "cache_key": folder.name,
            **train_denoiser(data, spec, tmp, trainer_kwargs, codec=codec),
        }
        if codec is not None:  # the generator folder holds its own VAE
            codec.vae.save_pretrained(tmp / "vae")
            meta["vae"] = {
                k: codec.meta[k]
                for k in (
                    "scaling_factor",
                    "test_reconstruction_mse",
                    "train_reconstruction_mse",
                    "train_seconds",
                )
            }
        if probe_per_class > 0:
            meta.update(run_probe(saved_generator(tmp, spec, data, cfg_scale, grid), data, probe_per_class))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))

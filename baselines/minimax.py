"""``method=minimax``: MinimaxDiffusion (Gu et al., CVPR 2024), docs/minimax.md.

The generator is fine-tuned per chunk of ``chunk_classes`` consecutive classes (the official
``--nclass``/``--phase``: one fine-tune per 20 classes on ImageNet-100/1K) with the minimax
terms (``ddcore/generators/minimax_finetune.py``, cached), then each class is sampled exactly
as ``method=unguided`` samples it: same sampler, same per-sample seeds. The only difference
from ``unguided`` is the weights: the chunk's fine-tuned parameters are loaded into the
generator for its classes and the base weights put back afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import math

import torch
from omegaconf import DictConfig, OmegaConf

from baselines.unguided import UnguidedSampling
from ddcore.errors import UserError
from ddcore.generators.minimax_finetune import load_or_finetune, trainable_names
from ddcore.latent_cache import LatentCache
from ddcore.method import ClassResult

log = logging.getLogger(__name__)
FINETUNE = {  # the official recipe (run.sh, train_dit.py); conf/method/minimax.yaml shows it
    "epochs": 8,  # passes over every train image of the chunk
    "steps": 12000,  # the official script samples the step-12,000 checkpoint
    "batch_size": 8,
    "lr": 1.0e-3,  # AdamW, weight decay 0, constant
    "ema_decay": 0.9999,  # sampling uses the EMA
    "label_dropout": 0.1,  # stays on while fine-tuning
    "flip": "auto",  # random horizontal flip where the dataset allows it (auto: data.hflip)
    "max_minutes": None,
    "checkpoint_every": 500,  # resume points of a killed fine-tune
    "seed": 0,
}
# generators whose denoiser has no fine-tunable layout here (refused before anything loads)
UNSUPPORTED_TARGETS = {
    "ddcore.generators.stable_diffusion.load_stable_diffusion": "sd15",
    "ddcore.generators.ldm.load_class_ldm": "ldm",
}
SUPPORTED = "generator=dit_tiny, unet_tiny, ldm_tiny or dit_xl2"


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})


def check_finetune(settings: dict) -> dict:
    """Known keys, in range; one UserError line otherwise."""
    unknown = sorted(set(settings) - set(FINETUNE))
    if unknown:
        raise UserError(f"unknown method.finetune.{unknown[0]} (known: {', '.join(FINETUNE)})")
    s = {**FINETUNE, **settings}
    for key in ("batch_size", "checkpoint_every"):
        if not (isinstance(s[key], int) and s[key] >= 1):
            raise UserError(f"method.finetune.{key} must be an integer >= 1, got {s[key]!r}")
    for key in ("epochs", "steps"):
        if s[key] is not None and not (isinstance(s[key], int) and s[key] >= 1):
            raise UserError(f"method.finetune.{key} must be an integer >= 1 or null, got {s[key]!r}")
    if not s["epochs"] and not s["steps"]:
        raise UserError("method.finetune needs epochs (passes over the chunk's images) or steps")
    if not (isinstance(s["lr"], (int, float)) and 0 < s["lr"] < math.inf):
        raise UserError(f"method.finetune.lr must be a finite number > 0, got {s['lr']!r}")
    if not (isinstance(s["ema_decay"], (int, float)) and 0 <= s["ema_decay"] < 1):
        raise UserError(f"method.finetune.ema_decay must be in [0, 1), got {s['ema_decay']!r}")
    if not (isinstance(s["label_dropout"], (int, float)) and 0 <= s["label_dropout"] <= 1):
        raise UserError(f"method.finetune.label_dropout must be in [0, 1], got {s['label_dropout']!r}")
    if str(s["flip"]) not in ("auto", "True", "False"):
        raise UserError(f"method.finetune.flip must be auto, true or false, got {s['flip']!r}")
    return s


class Minimax(UnguidedSampling):
    """Fine-tune per class chunk (minimax terms), then sample as ``unguided``.

    Args:
        lambda_r, lambda_d: weights of the representativeness and diversity terms (0.002, 0.008).
        memory_size: items per class in each FIFO memory (64).
        chunk_classes: classes per fine-tune (20, as the official code on ImageNet-100/1K).
        finetune: the fine-tune recipe (``FINETUNE`` keys; unset keys keep the official values).
        cache_dir: where fine-tuned weights are kept (None: ``.cache/minimax``).
        generator_target: the generator config's ``_target_``, to refuse generators that cannot
            be fine-tuned before anything is loaded.
        trainer_kwargs: Lightning Trainer arguments for the fine-tune (accelerator, precision).
        overrides: ``debug=tiny`` shrinks the fine-tune through this (``finetune`` keys merged).
        latent_cache, latent_cache_dir, latent_batch_size, latent_workers: the real latents.
        The rest: ``UnguidedSampling``'s sampling settings.
    """

    name = "minimax"

    def __init__(
        self,
        *,
        lambda_r: float,
        lambda_d: float,
        memory_size: int,
        chunk_classes: int,
        finetune: dict,
        cache_dir: str | None,
        generator_target: str | None,
        trainer_kwargs: dict | None,
        overrides: dict | None,
        latent_cache: bool,
        latent_cache_dir: str | None,
        latent_batch_size: int,
        latent_workers: int,
        **kwargs,
    ):
        """Settings and their defaults: ``ddapp.schemas.MinimaxSchema``; their ranges are checked
        with the config (``ddapp.config_checks.RULES``); the fine-tune settings ``debug=tiny``
        merges in (``overrides``) are checked here."""
        super().__init__(**kwargs)
        if generator_target in UNSUPPORTED_TARGETS:
            raise UserError(
                f"method=minimax cannot fine-tune generator={UNSUPPORTED_TARGETS[generator_target]} "
                f"(supported: {SUPPORTED})"
            )
        tuned = {**_plain(finetune), **_plain(_plain(overrides).get("finetune"))}
        self.finetune = check_finetune(tuned)
        self.lambda_r, self.lambda_d = float(lambda_r), float(lambda_d)
        self.memory_size, self.chunk_classes = memory_size, chunk_classes
        self.cache_dir = cache_dir or ".cache/minimax"
        self.trainer_kwargs = _plain(trainer_kwargs)
        self.latents = LatentCache.from_settings(
            latent_cache, latent_cache_dir, latent_batch_size, latent_workers
        )
        self._tuned: tuple[tuple, dict] | None = None  # the last chunk's weights, read once

    def check_generator(self, generator, data) -> None:
        if not hasattr(generator, "class_map"):
            raise UserError(f"method=minimax needs a class-conditional generator (supported: {SUPPORTED})")
        trainable_names(generator.denoiser)  # a UserError for other denoisers

    # -- chunks -------------------------------------------------------------------------------
    def chunk_of(self, data, label: int) -> list[int]:
        """The consecutive classes fine-tuned together with ``label`` (official ``--phase``)."""
        first = label // self.chunk_classes * self.chunk_classes
        return list(range(first, min(first + self.chunk_classes, data.num_classes)))

    def settings(self, data) -> dict:
        """Every setting the fine-tuned weights depend on (part of the cache key)."""
        flip = self.finetune["flip"]
        return {
            "lambda_r": self.lambda_r,
            "lambda_d": self.lambda_d,
            "memory_size": self.memory_size,
            "finetune": {**self.finetune, "flip": data.hflip if str(flip) == "auto" else bool(flip)},
        }

    def tuned_weights(self, generator, data, chunk: list[int]) -> dict[str, torch.Tensor]:
        key = (id(generator), tuple(chunk))
        if self._tuned is None or self._tuned[0] != key:
            weights = load_or_finetune(
                generator, data, chunk, self.settings(data), self.cache_dir, self.latents, self.trainer_kwargs
            )
            self._tuned = (key, weights)
        return self._tuned[1]

    # -- sampling: unguided's path, with the chunk's weights ----------------------------------
    def distill_classes(self, data, labels: list[int], ipc: int, seed: int, generator) -> list[ClassResult]:
        results: dict[int, ClassResult] = {}
        for chunk in dict.fromkeys(tuple(self.chunk_of(data, label)) for label in labels):
            mine = [label for label in labels if label in chunk]
            weights = self.tuned_weights(generator, data, list(chunk))
            with loaded(generator.denoiser, weights):
                results.update(zip(mine, super().distill_classes(data, mine, ipc, seed, generator)))
        return [results[label] for label in labels]


@contextlib.contextmanager
def loaded(model: torch.nn.Module, weights: dict[str, torch.Tensor]):
    """``model`` with ``weights`` (a subset of its parameters) in place; the originals restored."""
    params = dict(model.named_parameters())
    missing = sorted(set(weights) - set(params))
    if missing:
        raise RuntimeError(f"fine-tuned weights name parameters the generator lacks: {missing[:3]}")
    saved = {name: params[name].detach().clone() for name in weights}
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    try:
        yield model
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)

"""Distillation by sampling a generator: ``unguided``, ``mgd3`` and ``d4m``.

All run the same sampler with the same per-class random generators, so for lam = 0 (or
t_sg = steps) MGD^3 returns exactly the unguided images. All IPC samples of a class are denoised
in one batch (``batch_size`` caps it when memory is short); ``class_batch`` N > 1 denoises the
samples of up to N classes together (``distill_classes``), to fill a GPU when IPC is small.
A method differs from ``unguided`` only through three hooks per class: its modes
(``class_modes``), a guidance hook built from them (``guidance``) and img2img start latents
(``start_latents``).

Each is a method of the one interface in ``ddcore/method.py``: per class, ``distill_class``
returns the images and ``info`` with ``mode_id`` (sample j belongs to mode j) and the class's
``modes`` ((ipc, C, H, W) latents), which the driver saves as ``distilled/.modes/<class>.pt``.
"""

from __future__ import annotations

import logging

import torch

from ddcore.data.base import ImageClassificationData, resize_images
from ddcore.errors import UserError
from ddcore.generators.base import DiffusionGenerator
from ddcore.latent_cache import ENCODE_BATCH, LatentCache
from ddcore.method import ClassResult, MethodBase, mode_ids
from ddcore.sampling import (
    SAMPLERS,
    Guidance,
    StackedGuidance,
    check_spacing,
    check_x0_source,
    sample_latents,
    start_index,
)
from ddcore.seeding import rng_for
from mgd3.guidance import ModeGuidance, check_injection
from mgd3.modes import ModeDiscovery, modes_for_class

log = logging.getLogger(__name__)


class UnguidedSampling(MethodBase):
    """IPC generator samples per class, conditioned on the class, no extra guidance.

    Args:
        batch_size: denoiser rows per batch (None: all samples of the batch's classes at once).
        class_batch: classes denoised together (1: one class per batch). The images are the
            same either way: each sample keeps its own random generator, guidance hook and
            decoding batch; only the float rounding of a larger forward may differ.
    """

    uses_generator = True
    name = "unguided"

    def __init__(
        self,
        steps: int = 50,
        sampler: str = "ddpm",
        cfg_scale: float | None = None,
        batch_size: int | None = None,
        timestep_spacing: str = "auto",
        x0_from: str = "cfg",
        class_batch: int = 1,
    ):
        if steps < 1:
            raise UserError(f"method.steps must be >= 1, got {steps}")
        if sampler not in SAMPLERS:
            raise UserError(f"unknown method.sampler {sampler!r} (use one of: {', '.join(SAMPLERS)})")
        if cfg_scale is not None and not cfg_scale >= 0:  # also rejects nan
            raise UserError(f"method.cfg_scale must be >= 0 (1 = no guidance), got {cfg_scale}")
        if isinstance(class_batch, bool) or not isinstance(class_batch, int) or class_batch < 1:
            raise UserError(
                f"method.class_batch must be an integer >= 1 (1 = one class per batch), got {class_batch!r}"
            )
        self.steps, self.sampler, self.cfg_scale = steps, sampler, cfg_scale
        self.timestep_spacing = check_spacing(sampler, timestep_spacing)
        self.x0_from = check_x0_source(x0_from)
        self.batch_size, self.class_batch = batch_size, class_batch

    # -- per-class hooks ----------------------------------------------------------------------
    def class_modes(
        self, generator: DiffusionGenerator, data: ImageClassificationData, label: int, ipc: int, seed: int
    ) -> torch.Tensor | None:
        return None

    def guidance(self, modes: torch.Tensor | None, label: int, seed: int) -> Guidance | None:
        """The hook for the samples of class ``label`` (sample j guided by ``modes[j]``)."""
        return None

    def start_latents(self, modes: torch.Tensor | None) -> torch.Tensor | None:
        """Clean latents to start from (img2img), or None to start from pure noise."""
        return None

    strength = 1.0  # img2img: the share of the schedule that start latents are noised to

    # -- the loop -----------------------------------------------------------------------------
    def distill_class(
        self, data: ImageClassificationData, label: int, ipc: int, seed: int, generator: DiffusionGenerator
    ) -> ClassResult:
        return self.distill_classes(data, [label], ipc, seed, generator)[0]

    def distill_classes(
        self, data: ImageClassificationData, labels: list[int], ipc: int, seed: int, generator
    ) -> list[ClassResult]:
        """Modes found per class, then every class's samples denoised together."""
        modes = [self.class_modes(generator, data, label, ipc, seed) for label in labels]
        images = self.sample_classes(generator, data, labels, ipc, seed, modes)
        results = []
        for class_images, class_modes in zip(images, modes):
            info = mode_ids(ipc)
            if class_modes is not None:
                info["modes"] = class_modes.detach().cpu()
            results.append((class_images, info))
        return results

    def sample_classes(
        self, generator, data, labels: list[int], ipc: int, seed: int, modes: list | None = None
    ) -> list[torch.Tensor]:
        """IPC images per class of ``labels``, each guided by (or started from) its modes."""
        step = self.batch_size or ipc
        # decoded per class, in the chunks a class sampled alone has: decoding never mixes classes
        return [
            torch.cat(
                [
                    resize_images(generator.decode(latents[start : start + step]).cpu(), data.resolution)
                    for start in range(0, ipc, step)
                ]
            )
            for latents in self.class_latents(generator, labels, ipc, seed, modes)
        ]

    def class_latents(
        self, generator, labels: list[int], ipc: int, seed: int, modes: list | None = None
    ) -> list[torch.Tensor]:
        """(ipc, C, H, W) latents per class: the classes' samples in one row order, denoised in
        batches of up to ``batch_size`` rows (a batch may span classes)."""
        modes = modes if modes is not None else [None] * len(labels)
        hooks = [self.guidance(m, label, seed) for m, label in zip(modes, labels)]
        inits = [self.start_latents(m) for m in modes]
        # one generator per sample: its noise depends neither on batch_size nor on class_batch
        rngs = [[rng_for(seed, "sample", label, j) for j in range(ipc)] for label in labels]
        out = [[] for _ in labels]
        total = ipc * len(labels)
        step = self.batch_size or total
        for first in range(0, total, step):
            blocks = row_blocks(first, min(step, total - first), ipc)
            latents = sample_latents(
                generator,
                torch.tensor([labels[c] for c, _, n in blocks for _ in range(n)], dtype=torch.long),
                rng=[g for c, j, n in blocks for g in rngs[c][j : j + n]],
                steps=self.steps,
                cfg_scale=self.cfg_scale,
                sampler=self.sampler,
                guidance=StackedGuidance.of(
                    [(n, None if hooks[c] is None else hooks[c].subset(j, n)) for c, j, n in blocks]
                ),
                init=None if inits[0] is None else torch.cat([inits[c][j : j + n] for c, j, n in blocks]),
                strength=self.strength,
                timestep_spacing=self.timestep_spacing,
                x0_from=self.x0_from,
            )
            for (c, _, _), part in zip(blocks, latents.split([n for _, _, n in blocks])):
                out[c].append(part)
        return [torch.cat(parts) for parts in out]


def row_blocks(first: int, n: int, ipc: int) -> list[tuple[int, int, int]]:
    """Rows first..first+n of classes laid out one after another (ipc rows each), as
    (class, first sample, count) blocks: row_blocks(3, 4, 2) = [(1, 1, 1), (2, 0, 2), (3, 0, 1)]."""
    blocks = []
    while n > 0:
        c, j = divmod(first, ipc)
        count = min(ipc - j, n)
        blocks.append((c, j, count))
        first, n = first + count, n - count
    return blocks


class LatentModesMixin:
    """Modes per class from latents read through the on-disk latent cache."""

    discovery: ModeDiscovery
    cache: LatentCache

    def validate(self, data: ImageClassificationData, ipc: int) -> None:
        if self.discovery.representative == "closest_real":
            data.check_ipc(ipc, "closest-real centres need ipc distinct real latents per class")
        data.check_ipc(ipc, f"{self.discovery.method} mode discovery needs at least ipc latents per class")

    def class_modes(self, generator, data, label, ipc, seed) -> torch.Tensor:
        return modes_for_class(generator, data, label, ipc, seed, discovery=self.discovery, cache=self.cache)


class MGD3(LatentModesMixin, UnguidedSampling):
    """Mode-guided sampling: modes per class (k = IPC), sample j guided to mode j.

    Args:
        lam: guidance strength lambda (paper default 0.1; too large is catastrophic).
        t_sg: stop guidance -- guide only while the step index is above t_sg (0 = always,
            steps = never).
        injection: ``posterior_mean`` (official code, default), ``eps`` (paper eq. 6) or
            ``x0`` (shift x0_hat, re-derive eps); see ``mgd3/guidance.py`` for how they relate.
        mode_discovery: ``kmeans`` (default), ``closest_real``, ``random_real`` or ``dbscan``.
        kmeans_backend: ``auto`` (faiss if installed), ``faiss`` or ``torch``.
        dbscan_eps, dbscan_min_samples: DBSCAN settings (eps None: chosen from the data).
        linkage, divisive_criterion, divisive_level, divisive_tree_leaves, centres: the
            hierarchical options' settings (``agglomerative``, ``divisive``, ``divisive_levels``;
            ``ddcore/hierarchical.py``); centres: ``centroid`` | ``closest_real``.
        latent_cache, latent_cache_dir: keep the real latents on disk across runs.
        latent_batch_size, latent_workers: encoder batch and DataLoader decode workers.
    """

    name = "mgd3"

    def __init__(
        self,
        lam: float = 0.1,
        t_sg: int = 25,
        injection: str = "posterior_mean",
        mode_discovery: str = "kmeans",
        kmeans_backend: str = "auto",
        dbscan_eps: float | None = None,
        dbscan_min_samples: int = 5,
        linkage: str = "ward",
        divisive_criterion: str = "sse",
        divisive_level: int = 2,
        divisive_tree_leaves: int | None = None,
        centres: str = "centroid",
        latent_cache: bool = True,
        latent_cache_dir: str | None = None,
        latent_batch_size: int = ENCODE_BATCH,
        latent_workers: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not 0 <= lam < float("inf"):  # also rejects nan
            raise UserError(f"method.lam must be a finite number >= 0, got {lam}")
        if not 0 <= t_sg <= self.steps:
            raise UserError(
                f"method.t_sg={t_sg} is outside [0, {self.steps}] (the number of "
                "sampling steps, method.steps)"
            )
        self.lam, self.t_sg, self.injection = lam, t_sg, check_injection(injection)
        self.kmeans_backend = kmeans_backend
        self.discovery = ModeDiscovery(
            mode_discovery,
            kmeans_backend,
            dbscan_eps=dbscan_eps,
            dbscan_min_samples=dbscan_min_samples,
            linkage=linkage,
            criterion=divisive_criterion,
            level=int(divisive_level),
            tree_leaves=divisive_tree_leaves,
            representative=centres,
        )
        self.cache = LatentCache.from_settings(
            latent_cache, latent_cache_dir, latent_batch_size, latent_workers
        )

    def guidance(self, modes: torch.Tensor, label: int, seed: int) -> ModeGuidance:
        return ModeGuidance(modes, self.lam, self.t_sg, self.injection)


class D4M(LatentModesMixin, UnguidedSampling):
    """D4M-style prototypes (docs/baselines.md): k-means prototypes of the class latents (k = IPC),
    each noised to ``strength`` of the schedule and denoised by the same sampler (img2img),
    conditioned on the class (a class-name prompt for Stable Diffusion). No mode guidance.

    Args:
        strength: 0.7 as D4M: with 50 steps the prototypes are noised to step index 34 and the
            last 35 steps run.
    """

    name = "d4m"

    def __init__(
        self,
        strength: float = 0.7,
        kmeans_backend: str = "auto",
        latent_cache: bool = True,
        latent_cache_dir: str | None = None,
        latent_batch_size: int = ENCODE_BATCH,
        latent_workers: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        start_index(self.steps, strength)  # range check: a UserError now, not mid-run
        self.strength = float(strength)
        self.discovery = ModeDiscovery("kmeans", kmeans_backend)
        self.cache = LatentCache.from_settings(
            latent_cache, latent_cache_dir, latent_batch_size, latent_workers
        )

    def start_latents(self, modes: torch.Tensor) -> torch.Tensor:
        return modes

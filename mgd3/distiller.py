"""Distillation by sampling a generator: ``unguided`` (plain CFG sampling) and ``mgd3``.

Both run the same sampler with the same per-class random generators, so for lam = 0 (or
t_sg = steps) MGD^3 returns exactly the unguided images. All IPC samples of a class are denoised
in one batch (``batch_size`` caps it when memory is short).
"""

from __future__ import annotations

import logging
import time

import torch
from tqdm.auto import tqdm

from ddcore.data.base import ImageClassificationData, resize_images
from ddcore.distilled import DistilledSet
from ddcore.errors import UserError
from ddcore.generators.base import DiffusionGenerator
from ddcore.sampling import SAMPLERS, Guidance, sample_latents
from ddcore.seeding import rng_for
from mgd3.guidance import ModeGuidance
from mgd3.modes import modes_for_class

log = logging.getLogger(__name__)


class UnguidedSampling:
    """IPC generator samples per class, conditioned on the class, no extra guidance."""

    uses_generator = True
    name = "unguided"

    def __init__(self, steps: int = 50, sampler: str = "ddpm", cfg_scale: float | None = None,
                 batch_size: int | None = None):
        if steps < 1:
            raise UserError(f"method.steps must be >= 1, got {steps}")
        if sampler not in SAMPLERS:
            raise UserError(f"unknown method.sampler {sampler!r} (use one of: {', '.join(SAMPLERS)})")
        self.steps, self.sampler, self.cfg_scale = steps, sampler, cfg_scale
        self.batch_size = batch_size

    def validate(self, data: ImageClassificationData, ipc: int) -> None:
        """Checks that need the data but no generator (run before anything is written)."""

    def guidance(self, generator: DiffusionGenerator, data: ImageClassificationData, label: int,
                 ipc: int, seed: int) -> Guidance | None:
        return None

    def distill(self, data: ImageClassificationData, ipc: int, seed: int,
                generator: DiffusionGenerator) -> DistilledSet:
        images, labels = [], []
        start = time.perf_counter()
        for label in tqdm(range(data.num_classes), desc=f"{self.name}: classes", unit="class"):
            images.append(self.sample_class(generator, data, label, ipc, seed))
            labels.append(torch.full((ipc,), label, dtype=torch.long))
        seconds = time.perf_counter() - start
        log.info(f"{self.name}: {ipc * data.num_classes} images in {seconds:.1f}s")
        return DistilledSet(torch.cat(images), torch.cat(labels),
                            info={"mode_id": list(range(ipc)) * data.num_classes},
                            stats={"seconds": seconds})

    def sample_class(self, generator, data, label: int, ipc: int, seed: int) -> torch.Tensor:
        guidance = self.guidance(generator, data, label, ipc, seed)
        rng = rng_for(seed, "sample", label)
        chunks = []
        for start in range(0, ipc, self.batch_size or ipc):
            n = min(self.batch_size or ipc, ipc - start)
            chunk_guidance = guidance.subset(start, n) if guidance is not None else None
            latents = sample_latents(generator, torch.full((n,), label, dtype=torch.long), rng=rng,
                                     steps=self.steps, cfg_scale=self.cfg_scale,
                                     sampler=self.sampler, guidance=chunk_guidance)
            chunks.append(resize_images(generator.decode(latents).cpu(), data.resolution))
        return torch.cat(chunks)


class MGD3(UnguidedSampling):
    """Mode-guided sampling: k-means modes per class (k = IPC), sample j guided to mode j.

    Args:
        lam: guidance strength lambda (paper default 0.1; too large is catastrophic).
        t_sg: stop guidance -- guide only while the step index is above t_sg (0 = always,
            steps = never).
        kmeans_backend: ``auto`` (faiss if installed), ``faiss`` or ``torch``.
    """

    name = "mgd3"

    def __init__(self, lam: float = 0.1, t_sg: int = 25, kmeans_backend: str = "auto", **kwargs):
        super().__init__(**kwargs)
        if lam < 0:
            raise UserError(f"method.lam must be >= 0, got {lam}")
        if not 0 <= t_sg <= self.steps:
            raise UserError(f"method.t_sg={t_sg} is outside [0, {self.steps}] (the number of "
                            "sampling steps, method.steps)")
        self.lam, self.t_sg, self.kmeans_backend = lam, t_sg, kmeans_backend

    def validate(self, data: ImageClassificationData, ipc: int) -> None:
        data.check_ipc(ipc, "k-means needs at least k = ipc latents per class")

    def guidance(self, generator, data, label, ipc, seed) -> ModeGuidance:
        modes = modes_for_class(generator, data, label, ipc, seed, self.kmeans_backend)
        return ModeGuidance(modes, self.lam, self.t_sg)

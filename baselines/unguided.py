"""The ``unguided`` baseline, and the sampling loop every generator method shares.

IPC generator samples per class, conditioned on the class, no extra guidance. ``mgd3``, ``d4m``,
``manifoldgd`` and ``minimax`` subclass it: all run the same sampler with the same per-class random
generators, so for lam = 0 (or t_sg = steps) MGD^3 returns exactly the unguided images. All IPC
samples of a class are denoised in one batch (``batch_size`` caps it when memory is short);
``class_batch`` N > 1 denoises the samples of up to N classes together (``distill_classes``), to
fill a GPU when IPC is small. A subclass differs from ``unguided`` only through three hooks per
class: its modes (``class_modes``), a guidance hook built from them (``guidance``) and img2img
start latents (``start_latents``).

Each is a method of the one interface in ``ddcore/method.py``: per class, ``distill_class``
returns the images and ``info`` with ``mode_id`` (sample j belongs to mode j) and the class's
``modes`` ((ipc, C, H, W) latents), which the driver saves as ``distilled/.modes/<class>.pt``.
"""

from __future__ import annotations

import torch

from ddcore.data.base import ImageClassificationData, resize_images
from ddcore.errors import UserError
from ddcore.generators.base import DiffusionGenerator
from ddcore.method import ClassResult, MethodBase, mode_ids
from ddcore.sampling import (
    SAMPLERS,
    Guidance,
    StackedGuidance,
    check_spacing,
    check_x0_source,
    sample_latents,
)
from ddcore.seeding import rng_for


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
        *,
        steps: int,
        sampler: str,
        cfg_scale: float | None,
        batch_size: int | None,
        timestep_spacing: str,
        x0_from: str,
        class_batch: int,
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

"""Baselines that pick real images instead of generating: ``random``."""

from __future__ import annotations

import time

import torch

from ddcore.data.base import ImageClassificationData
from ddcore.distilled import DistilledSet
from ddcore.seeding import rng_for


class RandomReal:
    """IPC real train images per class, drawn uniformly without replacement."""

    uses_generator = False
    name = "random"

    def validate(self, data: ImageClassificationData, ipc: int) -> None:
        data.check_ipc(ipc, "random selection draws ipc distinct real images per class")

    def distill(self, data: ImageClassificationData, ipc: int, seed: int,
                generator=None) -> DistilledSet:
        start = time.perf_counter()
        chosen = []
        for label in range(data.num_classes):
            indices = data.class_indices(label)
            pick = torch.randperm(len(indices), generator=rng_for(seed, "random", label))[:ipc]
            chosen.append(indices[pick])
        chosen = torch.cat(chosen)
        return DistilledSet(data.train.load(chosen.tolist()), data.train.labels[chosen],
                            info={"source_index": chosen.tolist()},
                            stats={"seconds": time.perf_counter() - start})

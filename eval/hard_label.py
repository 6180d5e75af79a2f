"""Hard-label evaluation (IDC -> MinimaxDiffusion -> MGD^3 protocol, docs/protocols.md).

Train a student from scratch on the distilled images with their class labels: SGD (lr 0.01,
momentum 0.9, wd 5e-4, batch 64), MultiStepLR at 2/3 and 5/6 (gamma 0.2), epochs by IPC;
RandomResizedCrop(scale 0.5-1) + flip + color jitter + PCA lighting, CutMix (beta 1) on every
batch. Test on the real test split every E/evals epochs; report the final and the best top-1,
mean +- std over ``repeats`` students. The set lives on the device as one tensor.
"""

from __future__ import annotations

from typing import Callable

import torch

from ddcore.data.base import ImageClassificationData
from eval.augment import BatchAugment
from eval.batches import TrainSet
from eval.protocol import Protocol, mean_std  # noqa: F401  (mean_std re-exported)
from eval.student_module import StudentModule

DEFAULT_AUGMENT = {"scale": (0.5, 1.0), "flip": "auto", "color_jitter": (0.4, 0.4, 0.4), "lighting": 0.1}


def epochs_for_ipc(ipc: int) -> int:
    """Training length by images per class, as in IDC/MinimaxDiffusion."""
    for limit, epochs in ((1, 3000), (10, 2000), (50, 1500), (200, 1000), (500, 500)):
        if ipc <= limit:
            return epochs
    return 300


def flip_for(setting, data: ImageClassificationData) -> bool:
    """``auto``: flip where it keeps the class (the dataset says; not for digits)."""
    return data.hflip if setting == "auto" else bool(setting)


class HardLabelProtocol(Protocol):
    """Args (``conf/eval/hard_label.yaml``):
    student: a partial that builds the student from in_channels, num_classes, resolution.
    epochs: None = by IPC (``epochs_for_ipc``).
    evals: how many test evaluations over training (every E/evals epochs).
    augment: ``scale`` of RandomResizedCrop, ``flip`` (``auto`` = the dataset's choice),
        ``color_jitter`` (brightness, contrast, saturation), ``lighting`` (PCA std).
    cutmix: CutMix's Beta parameter, applied to every batch (0 = off).
    reference: full-data / random-subset accuracies and DD-Ranking's scores (eval.reference).
    """

    name = "hard_label"

    def __init__(
        self,
        student: Callable[..., torch.nn.Module],
        epochs: int | None = None,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        batch_size: int = 64,
        milestones: tuple[float, ...] = (0.6666667, 0.8333333),  # as conf/eval/hard_label.yaml: one cache key
        gamma: float = 0.2,
        evals: int = 100,
        repeats: int = 3,
        augment: dict | None = None,
        cutmix: float = 1.0,
        **common,
    ):
        super().__init__(
            student,
            epochs,
            evals,
            repeats,
            batch_size,
            {**DEFAULT_AUGMENT, **dict(augment or {})},
            cutmix,
            **common,
        )
        self.optim = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, milestones=tuple(milestones), gamma=gamma
        )

    def epochs_for(self, ipc: int) -> int:
        return self.epochs or epochs_for_ipc(ipc)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "optim": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.optim.items()},
        }

    def hard_label_protocol(self) -> "HardLabelProtocol":
        return self

    def make_augment(self, data: ImageClassificationData, seed: int) -> BatchAugment:
        a = self.augment
        return BatchAugment(
            scale=a.get("scale", (0.5, 1.0)),
            flip=flip_for(a.get("flip", "auto"), data),
            color_jitter=a.get("color_jitter"),
            lighting=a.get("lighting", 0.0),
            seed=seed,
        )

    def make_module(
        self, student, data, train: TrainSet, epochs: int, seed: int, prefix: str
    ) -> StudentModule:
        return StudentModule(
            student,
            data.num_classes,
            epochs,
            self.optim,
            self.make_augment(data, seed),
            self.cutmix,
            train,
            prefix,
        )

"""Soft-label evaluation (RDED / SRe2L's FKD protocol, docs/protocols.md).

Each batch of the distilled set is augmented (RDED's ShufflePatches -> RandomResizedCrop(scale
0.5-1) -> flip), CutMix-ed (beta 1, every batch), and labelled online by a teacher trained on
the full real data: ``softmax(teacher(x) / T)`` with T = 20. The student minimises
``KLDiv(log_softmax(student(x) / T), teacher_probs, batchmean)`` with AdamW (lr 1e-3, betas
0.9/0.999, wd 0.01 without decay on 1-D parameters) for 300 epochs under RDED's cosine schedule.
Batch size by IPC as RDED: 1 -> 10, <= 10 -> 50, else 100; x2 with 100+ classes; capped at the
set size.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from ddcore.data.base import ImageClassificationData
from eval.augment import BatchAugment
from eval.batches import TrainSet
from eval.hard_label import HardLabelProtocol, flip_for
from eval.protocol import Protocol
from eval.student_module import StudentModule
from eval.teacher import Teacher

DEFAULT_AUGMENT = {"shuffle_factor": 2, "scale": (0.5, 1.0), "flip": "auto"}
SCHEDULES = ("rded_cosine", "cosine")


def soft_label_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(teacher_T || student_T) averaged over the batch; no T^2 factor, as in RDED's code."""
    log_q = F.log_softmax(student_logits.float() / temperature, dim=1)
    p = F.softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_q, p, reduction="batchmean")


def batch_size_for_ipc(ipc: int, num_classes: int, n: int, dataset: str = "") -> int:
    """RDED's ``re_batch_size``: by IPC, doubled for 100+ classes (Tiny ImageNet: 100)."""
    size = 10 if ipc <= 1 else 50 if ipc <= 10 else 100
    if num_classes >= 100:
        size *= 2
    if dataset == "tinyimagenet":
        size = 100
    return min(size, n)


def lr_factor(schedule: str, epoch: int, epochs: int) -> float:
    """``rded_cosine``: RDED's code, 0.5 (1 + cos(pi t / 2E)) -- a quarter cosine ending at half
    the rate; ``cosine``: SRe2L's 0.5 (1 + cos(pi t / E)), ending at 0."""
    if epoch > epochs:
        return 0.0
    span = 2.0 if schedule == "rded_cosine" else 1.0
    return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs / span))


class SoftLabelModule(StudentModule):
    """Online soft labels from a frozen teacher; AdamW + cosine."""

    def __init__(
        self,
        student,
        teacher: torch.nn.Module,
        num_classes: int,
        epochs: int,
        optim: dict,
        augment,
        cutmix: float,
        train: TrainSet,
        prefix: str,
        temperature: float,
    ):
        super().__init__(student, num_classes, epochs, optim, augment, cutmix, train, prefix)
        self.teacher = teacher
        self.temperature = temperature

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # Lightning switches the whole module to train mode each epoch
        return self

    def training_step(self, batch, batch_idx):
        x, y = self.train_batch(batch)
        if self.cutmix is not None:
            x, _ = self.cutmix(x, y)  # the teacher labels the mixed images
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        loss = soft_label_loss(self(x), teacher_logits, self.temperature)
        self.log(f"{self.prefix}/train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        o = self.optim
        params = [p for p in self.student.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.ndim > 1]},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
        opt = torch.optim.AdamW(groups, lr=o["lr"], betas=tuple(o["betas"]), weight_decay=o["weight_decay"])
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda epoch: lr_factor(o["schedule"], epoch, self.epochs)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


class SoftLabelProtocol(Protocol):
    """Args (``conf/eval/soft_label.yaml``):
    student: a partial that builds the student (RDED: torchvision's ResNet-18, BatchNorm).
    teacher: an ``eval.teacher.Teacher`` (trained on the full real data, or loaded).
    epochs: 300 (None = 300).
    temperature: of the teacher's and the student's softmax.
    schedule: ``rded_cosine`` (RDED's code) or ``cosine`` (SRe2L).
    batch_size: None = by IPC (``batch_size_for_ipc``).
    augment: ``shuffle_factor`` (RDED's ShufflePatches), ``scale``, ``flip``.
    hard_label: settings of the hard-label protocol that HLR needs (reference points); its
        epochs default to this protocol's, as DD-Ranking trains both for the same epochs.
    """

    name = "soft_label"

    def __init__(
        self,
        student: Callable[..., torch.nn.Module],
        teacher: Teacher,
        epochs: int | None = 300,
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        weight_decay: float = 0.01,
        temperature: float = 20.0,
        schedule: str = "rded_cosine",
        batch_size: int | None = None,
        evals: int = 30,
        repeats: int = 3,
        augment: dict | None = None,
        cutmix: float = 1.0,
        hard_label: dict | None = None,
        **common,
    ):
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r} ({', '.join(SCHEDULES)})")
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
        self.teacher = teacher
        self.optim = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, schedule=schedule)
        self.temperature = float(temperature)
        self.hard_label_settings = dict(hard_label or {})
        self._hard: HardLabelProtocol | None = None
        self._teacher_model, self._teacher_data, self.teacher_meta = None, None, {}

    def epochs_for(self, ipc: int) -> int:
        return self.epochs or 300

    def batch_size_for(self, ipc: int, data: ImageClassificationData, n: int) -> int:
        if self.batch_size:
            return min(self.batch_size, n)
        return batch_size_for_ipc(ipc, data.num_classes, n, data.name)

    def describe(self) -> dict:
        t = self.teacher
        return {
            **super().describe(),
            "optim": {**self.optim, "betas": list(self.optim["betas"])},
            "temperature": self.temperature,
            "teacher": {
                "arch": t.arch,
                "checkpoint": t.checkpoint,
                "seed": t.seed,
                "pretrained_dir": t.pretrained_dir,
                "train": t.train_settings,
            },
        }

    def hard_label_protocol(self) -> HardLabelProtocol:
        if self._hard is None:
            self._hard = HardLabelProtocol(
                self.student,
                **{"repeats": self.repeats, "epochs": self.epochs, **self.hard_label_settings},
                normalize=self.normalize,
                test_batch_size=self.test_batch_size,
                num_workers=self.num_workers,
                max_bank_gb=self.max_bank_gb,
                checkpoint_every=self.checkpoint_every,
            )
            self._hard.test_images = self.test_images
        self._hard.records = self.records  # its students are recorded with this protocol's
        return self._hard

    def prepare(self, data: ImageClassificationData, seed: int, trainer_factory) -> None:
        if self._teacher_data is not data:
            self._teacher_model, self.teacher_meta = self.teacher.get(data, trainer_factory)
            self._teacher_data = data

    def evaluate(self, distilled, data, ipc, seed, trainer_factory, logger=None) -> dict:
        metrics = super().evaluate(distilled, data, ipc, seed, trainer_factory, logger)
        return {**metrics, **self.teacher_meta}

    def make_module(
        self, student, data, train: TrainSet, epochs: int, seed: int, prefix: str
    ) -> SoftLabelModule:
        a = self.augment
        augment = BatchAugment(
            scale=a.get("scale", (0.5, 1.0)),
            flip=flip_for(a.get("flip"), data),
            shuffle_factor=a.get("shuffle_factor", 2),
            seed=seed,
        )
        return SoftLabelModule(
            student,
            self._teacher_model,
            data.num_classes,
            epochs,
            self.optim,
            augment,
            self.cutmix,
            train,
            prefix,
            self.temperature,
        )

    def __getstate__(self):  # worker processes get the teacher, not the cached hard protocol
        state = dict(self.__dict__)
        state["_hard"] = None
        return state

"""Hard-label evaluation (IDC -> MinimaxDiffusion -> MGD^3 protocol, REFERENCE §3).

Train a student from scratch on the distilled images with their class labels, test it on the
real test split every E/evals epochs, and report the final and the best top-1 accuracy,
mean +- std over ``repeats`` students. The distilled set lives on the device as one tensor and
is augmented there in whole batches.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Callable

import lightning.pytorch as pl
import torch

from ddcore.data.base import ImageClassificationData, ImageSource
from ddcore.distilled import DistilledSet
from ddcore.progress import ProgressLog
from ddcore.seeding import derive_seed
from eval.student_module import StudentModule

log = logging.getLogger(__name__)


def epochs_for_ipc(ipc: int) -> int:
    """Training length by images per class, as in IDC/MinimaxDiffusion."""
    for limit, epochs in ((1, 3000), (10, 2000), (50, 1500), (200, 1000), (500, 500)):
        if ipc <= limit:
            return epochs
    return 300


class SourceBatches:
    """Collate function loading whole batches of indices from an ImageSource (picklable)."""

    def __init__(self, source: ImageSource):
        self.source = source

    def __call__(self, indices: list[int]):
        return self.source.load(indices), self.source.labels[indices]


def test_loader(source: ImageSource, batch_size: int, num_workers: int):
    return torch.utils.data.DataLoader(list(range(len(source))), batch_size=batch_size,
                                       collate_fn=SourceBatches(source), num_workers=num_workers)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


class HardLabelProtocol:
    """Args:
        student: a partial that builds the student from in_channels, num_classes, resolution.
        epochs: None = by IPC (``epochs_for_ipc``).
        evals: how many test evaluations over training (every E/evals epochs).
        augment: ``scale`` of RandomResizedCrop and ``flip`` (``auto`` = the dataset's choice).
    """

    name = "hard_label"

    def __init__(self, student: Callable[..., torch.nn.Module], epochs: int | None = None,
                 lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4,
                 batch_size: int = 64, milestones: tuple[float, ...] = (2 / 3, 5 / 6),
                 gamma: float = 0.2, evals: int = 100, repeats: int = 3,
                 augment: dict | None = None, test_batch_size: int = 500, num_workers: int = 0,
                 distilled_dir: str | None = None):
        self.student = student
        self.epochs = epochs
        self.optim = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                          milestones=tuple(milestones), gamma=gamma)
        self.batch_size, self.evals, self.repeats = batch_size, evals, repeats
        self.augment = dict(augment or {"scale": (0.5, 1.0), "flip": "auto"})
        self.test_batch_size, self.num_workers = test_batch_size, num_workers
        self.distilled_dir = distilled_dir

    def evaluate(self, distilled: DistilledSet, data: ImageClassificationData, ipc: int,
                 seed: int, trainer_factory: Callable[..., pl.Trainer], logger=None) -> dict:
        epochs = self.epochs or epochs_for_ipc(ipc)
        finals, bests = [], []
        start = time.perf_counter()
        for repeat in range(self.repeats):
            module = self.train_one(distilled, data, epochs, derive_seed(seed, "student", repeat),
                                    trainer_factory, logger, f"student/rep{repeat}")
            finals.append(module.final_acc)
            bests.append(module.best_acc)
            log.info(f"student {repeat + 1}/{self.repeats}: final {module.final_acc:.4f}, "
                     f"best {module.best_acc:.4f}")
        (final_mean, final_std), (best_mean, best_std) = mean_std(finals), mean_std(bests)
        return {"student/final_acc_mean": final_mean, "student/final_acc_std": final_std,
                "student/best_acc_mean": best_mean, "student/best_acc_std": best_std,
                "student/final_acc_runs": finals, "student/best_acc_runs": bests,
                "student/epochs": epochs, "student/repeats": self.repeats,
                "student/seconds": round(time.perf_counter() - start, 1)}

    def train_one(self, distilled, data, epochs, seed, trainer_factory, logger, prefix):
        pl.seed_everything(seed % (2**31), verbose=False)
        student = self.student(in_channels=data.channels, num_classes=data.num_classes,
                               resolution=data.resolution)
        augment = {**self.augment, "flip": data.hflip if self.augment["flip"] == "auto"
                   else bool(self.augment["flip"])}
        module = StudentModule(student, data.num_classes, epochs, augment=augment, seed=seed,
                               prefix=prefix, **self.optim)
        train = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(distilled.images, distilled.labels),
            batch_size=min(self.batch_size, len(distilled)), shuffle=True,
            generator=torch.Generator().manual_seed(seed))
        test = test_loader(data.test, self.test_batch_size, self.num_workers)
        every = max(1, epochs // self.evals)
        trainer = trainer_factory(max_epochs=epochs, logger=logger or False,
                                  check_val_every_n_epoch=every, num_sanity_val_steps=0,
                                  callbacks=[ProgressLog(prefix, every_s=15)],
                                  enable_checkpointing=False, enable_progress_bar=False,
                                  enable_model_summary=False, log_every_n_steps=1)
        trainer.fit(module, train, test)
        if epochs % every:
            trainer.validate(module, test, verbose=False)
        return module

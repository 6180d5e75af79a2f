"""Lightning module that trains a student on a set held on its device and tests it on real data.

The train set is a buffer of the module (uint8, moved to the device with it); the train
DataLoader yields only shuffled indices, so an epoch costs one gather, whole-batch tensor
augmentation and CutMix, and the forward/backward. Test accuracy is a torchmetrics Accuracy,
the best of the run a torchmetrics MaxMetric.
"""

from __future__ import annotations

from typing import Callable

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
import torchmetrics

from ddcore.progress import ProgressLog
from eval.augment import BatchAugment, make_cutmix
from eval.batches import TrainSet, as_float


class StudentModule(pl.LightningModule):
    """Hard labels: augment -> CutMix (mixed one-hot targets) -> cross-entropy; SGD + MultiStepLR.

    Tracks the test accuracy of every evaluation; ``best_acc`` and ``final_acc`` are both
    reported because the best-of-run number peeks at the test set.
    """

    def __init__(
        self,
        student: torch.nn.Module,
        num_classes: int,
        epochs: int,
        optim: dict,
        augment: BatchAugment | None,
        cutmix: float = 0.0,
        train: TrainSet | None = None,
        prefix: str = "student",
    ):
        super().__init__()
        self.student = student
        self.num_classes, self.epochs, self.optim = num_classes, epochs, dict(optim)
        self.augment = augment
        self.cutmix = make_cutmix(num_classes, cutmix)
        held = train is not None and train.images is not None
        self.register_buffer("bank", train.images if held else None, persistent=False)
        self.register_buffer("bank_labels", train.labels if held else None, persistent=False)
        self.prefix = prefix
        self.test_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.best_test_acc = torchmetrics.MaxMetric()
        self.history: list[tuple[int, float]] = []

    def forward(self, x):
        return self.student(x)

    def train_batch(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Float images in [0, 1], augmented, and their labels."""
        if self.bank is not None:
            x, y = self.bank[batch], self.bank_labels[batch]
        else:
            x, y = batch
        x = as_float(x)
        return (self.augment(x) if self.augment is not None else x), y

    def training_step(self, batch, batch_idx):
        x, y = self.train_batch(batch)
        target = y
        if self.cutmix is not None:
            x, target = self.cutmix(x, y)
        loss = F.cross_entropy(self(x).float(), target)
        self.log(f"{self.prefix}/train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.test_acc.update(self(as_float(x)).argmax(dim=1), y)

    def on_validation_epoch_end(self):
        acc = float(self.test_acc.compute())
        self.test_acc.reset()
        self.best_test_acc.update(acc)
        self.history.append((min(self.current_epoch + 1, self.epochs), acc))
        self.log(f"{self.prefix}/test_acc", acc)

    @property
    def final_acc(self) -> float:
        return self.history[-1][1]

    @property
    def best_acc(self) -> float:
        return float(self.best_test_acc.compute())

    def configure_optimizers(self):
        o = self.optim
        opt = torch.optim.SGD(
            self.student.parameters(), lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"]
        )
        steps = sorted({max(1, round(self.epochs * m)) for m in o["milestones"]})
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=steps, gamma=o["gamma"])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def fit(
    module: StudentModule,
    train_loader,
    test_loader,
    epochs: int,
    evals: int,
    trainer_factory: Callable[..., pl.Trainer],
    logger=None,
    prefix: str = "student",
    **trainer_kwargs,
) -> StudentModule:
    """Train for ``epochs``, testing every ``epochs // evals`` epochs and after the last one."""
    every = max(1, epochs // max(1, evals))
    trainer = trainer_factory(
        max_epochs=epochs,
        logger=logger or False,
        check_val_every_n_epoch=every,
        num_sanity_val_steps=0,
        callbacks=[ProgressLog(prefix, every_s=15)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        **trainer_kwargs,
    )
    trainer.fit(module, train_loader, test_loader)
    if epochs % every:
        trainer.validate(module, test_loader, verbose=False)
    return module

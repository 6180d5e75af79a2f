"""Lightning module that trains a student on a distilled set and tests it on real data."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
import torchmetrics

from eval.augment import random_resized_crop


class StudentModule(pl.LightningModule):
    """Hard-label training: augment on the device, cross-entropy, SGD + MultiStepLR.

    Tracks the test accuracy of every evaluation; ``best_acc`` and ``final_acc`` are both
    reported because the best-of-run number peeks at the test set.
    """

    def __init__(self, student: torch.nn.Module, num_classes: int, epochs: int, lr: float,
                 momentum: float, weight_decay: float, milestones: tuple[float, ...],
                 gamma: float, augment: dict, seed: int, prefix: str = "student"):
        super().__init__()
        self.student = student
        self.epochs = epochs
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.milestones, self.gamma = milestones, gamma
        self.augment = augment
        self.aug_rng = torch.Generator().manual_seed(seed)
        self.prefix = prefix
        self.test_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.history: list[tuple[int, float]] = []

    def forward(self, x):
        return self.student(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.augment.get("enabled", True):
            x = random_resized_crop(x, self.aug_rng, scale=tuple(self.augment["scale"]),
                                    flip=self.augment["flip"])
        loss = F.cross_entropy(self(x), y)
        self.log(f"{self.prefix}/train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.test_acc.update(self(x).argmax(dim=1), y)

    def on_validation_epoch_end(self):
        acc = float(self.test_acc.compute())
        self.test_acc.reset()
        self.history.append((min(self.current_epoch + 1, self.epochs), acc))
        self.log(f"{self.prefix}/test_acc", acc)

    @property
    def final_acc(self) -> float:
        return self.history[-1][1]

    @property
    def best_acc(self) -> float:
        return max(acc for _, acc in self.history)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.student.parameters(), lr=self.lr, momentum=self.momentum,
                              weight_decay=self.weight_decay)
        steps = sorted({max(1, round(self.epochs * m)) for m in self.milestones})
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=steps, gamma=self.gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

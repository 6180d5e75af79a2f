"""Lightning module that trains a student on a set held on its device and tests it on real data.

The train set is held by the module (uint8, moved to its device when training starts); the train
DataLoader yields only shuffled indices, so an epoch costs one gather, whole-batch tensor
augmentation and CutMix, and the forward/backward. Test accuracy is a torchmetrics Accuracy,
the best of the run a torchmetrics MaxMetric.

``fit(..., checkpoint=path, checkpoint_every=N)`` saves the student every N epochs with every
random state the rest of its training draws from; a fit that finds the file resumes from it and
ends exactly as an uninterrupted one.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Callable

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
import torchmetrics

from ddcore.errors import UserError
from ddcore.files import load_plain, temp_name
from ddcore.interrupts import raise_pending
from ddcore.progress import ProgressLog
from eval.augment import BatchAugment, make_cutmix
from eval.batches import TrainSet, as_float

log = logging.getLogger(__name__)


def never() -> bool:
    return False


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
        # plain attributes, not buffers: DDP broadcasts buffers from rank 0 at every step (7.5 GB
        # at ImageNet-1K IPC 50) while every rank holds the same set; moved in on_fit_start
        self.bank = train.images if held else None
        self.bank_labels = train.labels if held else None
        self.prefix = prefix
        self.test_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.best_test_acc = torchmetrics.MaxMetric()
        self.history: list[tuple[int, float]] = []

    def forward(self, x):
        return self.student(x)

    def on_fit_start(self) -> None:
        if self.bank is not None:  # the set on the student's device (once per student)
            self.bank, self.bank_labels = self.bank.to(self.device), self.bank_labels.to(self.device)

    def setup(self, stage: str) -> None:
        # test accuracy is gathered over the processes of one DDP student only: the ranks of a
        # job that train students of their own must not mix them
        together = self.trainer.world_size > 1
        for metric in (self.test_acc, self.best_test_acc):
            metric.distributed_available_fn = torch.distributed.is_initialized if together else never

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["test_history"] = list(self.history)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = [tuple(h) for h in checkpoint.get("test_history", [])]
        for _, acc in self.history:  # the best so far is the best of the history
            self.best_test_acc.update(acc)

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


class ResumableCheckpoint(pl.Callback):
    """Every ``every`` epochs (not after the last): the trainer's checkpoint (weights, optimizer,
    schedule, epoch, test history) with the global random states and those of ``generators``
    (the augmentation's, the shuffling's), written atomically to ``path``."""

    def __init__(self, path: Path, every: int, generators: dict[str, torch.Generator]):
        self.path, self.every, self.generators = Path(path), int(every), generators

    def on_train_epoch_end(self, trainer, pl_module):
        done = trainer.current_epoch + 1
        if done % self.every or done >= trainer.max_epochs:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_name(self.path)
        try:
            trainer.save_checkpoint(tmp)  # every rank calls it (DDP); global rank 0 writes
            if trainer.is_global_zero:
                os.replace(tmp, self.path)
        finally:  # a full disk leaves no half-written temp file in the run folder
            tmp.unlink(missing_ok=True)

    def state_dict(self) -> dict:
        """Plain types and tensors only (checkpoints are read with ``weights_only=True``)."""
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            # this rank's device only: a resume may see another number of GPUs
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
            "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
            "python": random.getstate(),
            "generators": {name: g.get_state() for name, g in self.generators.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        restore_cuda_rng(state.get("cuda"))
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        random.setstate(
            tuple(state["python"][:1]) + (tuple(state["python"][1]),) + tuple(state["python"][2:])
        )
        for name, g in self.generators.items():
            g.set_state(state["generators"][name])


def restore_cuda_rng(state) -> None:
    """The saved CUDA generator state into the current device's generator. Checkpoints written
    before this format hold one state per visible GPU (a list): the current device's entry is
    used when it exists."""
    if isinstance(state, (list, tuple)):
        index = torch.cuda.current_device() if torch.cuda.is_available() else 0
        state = state[index] if index < len(state) else None
    if state is None or not len(state) or not torch.cuda.is_available():
        return
    torch.cuda.set_rng_state(state, device=torch.cuda.current_device())


RETRAIN = "delete it to retrain that student from the start"


def check_resumable(path: Path) -> None:
    """A student checkpoint must read as plain data (``ddcore.files.load_plain``: a crafted
    file's code is refused, never run) into a Lightning checkpoint; otherwise one line names
    the file and the fix (the file only caches an unfinished student)."""
    state = load_plain(path, "the student checkpoint", RETRAIN)
    keys = ("state_dict", "epoch", "optimizer_states")
    if not isinstance(state, dict) or not all(key in state for key in keys):
        raise UserError(f"cannot read the student checkpoint {path}: not a student checkpoint ({RETRAIN})")


def fit(
    module: StudentModule,
    train_loader,
    test_loader,
    epochs: int,
    evals: int,
    trainer_factory: Callable[..., pl.Trainer],
    logger=None,
    prefix: str = "student",
    checkpoint: Path | None = None,
    checkpoint_every: int = 0,
    **trainer_kwargs,
) -> StudentModule:
    """Train for ``epochs``, testing every ``epochs // evals`` epochs and after the last one;
    with ``checkpoint``, resume from it if it exists and save it every ``checkpoint_every``."""
    every = max(1, epochs // max(1, evals))
    callbacks = [ProgressLog(prefix, every_s=15)]
    resume = None
    if checkpoint is not None and checkpoint_every > 0:
        generators = {"shuffle": train_loader.generator}
        if getattr(module.augment, "rng", None) is not None:
            generators["augment"] = module.augment.rng
        callbacks.append(ResumableCheckpoint(checkpoint, checkpoint_every, generators))
        resume = str(checkpoint) if Path(checkpoint).is_file() else None
        if resume:
            check_resumable(Path(resume))
            log.info(f"{prefix}: resuming from {resume}")
    trainer = trainer_factory(
        max_epochs=epochs,
        logger=logger or False,
        check_val_every_n_epoch=every,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        **trainer_kwargs,
    )
    if trainer.world_size > 1:
        log.info(
            f"{prefix}: one student over {trainer.world_size} processes ({type(trainer.strategy).__name__})"
        )
    trainer.fit(module, train_loader, test_loader, ckpt_path=resume, weights_only=True)
    raise_pending()  # a SIGTERM a finaliser swallowed: Lightning stopped early, not finished
    if epochs % every:
        trainer.validate(module, test_loader, verbose=False)
    return module

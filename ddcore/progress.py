"""Periodic progress lines with rate and ETA for Lightning fits (readable in cluster logs too)."""

from __future__ import annotations

import logging
import math
import time

import lightning.pytorch as pl

log = logging.getLogger(__name__)


def format_rate(rate: float, unit: str) -> str:
    """``41.3 steps/s``, or ``78 s/epoch`` under a tenth of a unit per second (slow epochs)."""
    return f"{rate:.1f} {unit}s/s" if rate >= 0.1 or rate <= 0 else f"{1 / rate:.0f} s/{unit}"


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )


class ProgressLog(pl.Callback):
    """Logs ``<what>: step 120/500 (35.1 steps/s, ETA 0m11s) loss=...`` every ``every_s`` seconds.

    Counts optimizer steps when the fit is bounded by ``max_steps``; otherwise epochs at each
    epoch's end, and steps of all epochs within an epoch that runs longer than ``every_s`` (one
    epoch over an ImageNet-size set takes minutes).
    """

    def __init__(self, what: str, every_s: float = 10.0):
        self.what = what
        self.every_s = every_s
        self._start = self._last = 0.0

    def on_train_start(self, trainer, pl_module):
        self._start = self._last = time.perf_counter()

    def _report(self, trainer, done: int, total: int, unit: str, force: bool = False):
        now = time.perf_counter()
        if not force and now - self._last < self.every_s:
            return
        self._last = now
        rate = done / max(now - self._start, 1e-9)
        eta = (total - done) / rate if rate > 0 else 0.0
        metrics = " ".join(
            f"{k}={float(v):.4g}" for k, v in trainer.callback_metrics.items() if v.numel() == 1
        )
        log.info(
            f"{self.what}: {unit} {done}/{total} ({format_rate(rate, unit)}, "
            f"ETA {format_seconds(eta)}) {metrics}".rstrip()
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.max_steps and trainer.max_steps > 0:
            self._report(trainer, trainer.global_step, trainer.max_steps, "step")
        elif time.perf_counter() - self._last >= self.every_s and math.isfinite(trainer.num_training_batches):
            total = trainer.max_epochs * trainer.num_training_batches  # a long epoch: steps
            self._report(
                trainer, trainer.current_epoch * trainer.num_training_batches + batch_idx + 1, total, "step"
            )

    def on_train_epoch_end(self, trainer, pl_module):
        if not (trainer.max_steps and trainer.max_steps > 0):
            self._report(trainer, trainer.current_epoch + 1, trainer.max_epochs, "epoch")

    def on_train_end(self, trainer, pl_module):
        total = time.perf_counter() - self._start
        log.info(f"{self.what}: done in {format_seconds(total)}")


class RateLog:
    """``<what>: 512/1300 images (41.3 images/s, ETA 0m19s)`` at most every ``every_s`` seconds,
    and once at the end: progress for long loops outside Lightning (scoring, encoding)."""

    def __init__(self, what: str, total: int, unit: str = "images", every_s: float = 10.0):
        self.what, self.total, self.unit, self.every_s = what, total, unit, every_s
        self._start = self._last = time.perf_counter()

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if done < self.total and now - self._last < self.every_s:
            return
        self._last = now
        rate = done / max(now - self._start, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else 0.0
        log.info(
            f"{self.what}: {done}/{self.total} {self.unit} ({rate:.1f} {self.unit}/s, "
            f"ETA {format_seconds(eta)})"
        )

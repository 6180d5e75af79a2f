"""What the hard- and soft-label protocols share: checking a set, running repeats (dealt over
the ranks of a multi-process job), testing on the real test split, summarising, reference points.

A protocol subclass says how to build the Lightning module of one repeat (``make_module``), how
long to train (``epochs_for``) and in which batches (``batch_size_for``). Each finished repeat is
recorded, an unfinished one checkpointed, and repeats are dealt over the ranks of a
multi-process job (``eval.records``, attached by the application as ``protocol.records``): with
``torchrun --nproc_per_node N``, N repeats train side by side, one per GPU.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from pathlib import Path
from typing import Callable

import lightning.pytorch as pl
import torch

from ddcore.data.base import ImageClassificationData
from ddcore.distilled import DistilledSet
from ddcore.errors import UserError
from ddcore.seeding import derive_seed
from eval.batches import TestImages, TrainSet
from eval.records import NOT_MINE, Run, StudentRecords, tensor_digest
from eval.student_module import StudentModule, fit
from eval.students import arch_name, with_normalization

log = logging.getLogger(__name__)


def mean_std(values: list[float]) -> tuple[float, float]:
    if any(math.isnan(v) for v in values):  # a rank that reports nothing (eval.records.NOT_MINE)
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def check_distilled(distilled: DistilledSet, data: ImageClassificationData, ipc: int) -> None:
    """Every class present with exactly ``ipc`` images; labels in range."""
    labels = distilled.labels
    if len(labels) == 0:
        raise UserError("the distilled set is empty")
    if int(labels.min()) < 0 or int(labels.max()) >= data.num_classes:
        raise UserError(f"distilled labels must lie in [0, {data.num_classes}) for {data.name}")
    counts = distilled.per_class_counts(data.num_classes)
    missing = [data.class_ids[i] for i, c in enumerate(counts) if c == 0]
    if missing:
        raise UserError(
            f"the distilled set has no images of {len(missing)} of the {data.num_classes} "
            f"classes of {data.name} (e.g. {missing[:3]}); every class needs ipc={ipc}"
        )
    off = [(data.class_ids[i], c) for i, c in enumerate(counts) if c != ipc]
    if off:
        raise UserError(
            f"ipc mismatch: class {off[0][0]!r} has {off[0][1]} images but ipc={ipc} "
            f"({len(off)} classes differ; give every class ipc images or set ipc)"
        )


class Protocol:
    """Shared settings: see ``conf/eval/hard_label.yaml`` and ``soft_label.yaml``."""

    name = "protocol"

    def __init__(
        self,
        student: Callable[..., torch.nn.Module],
        epochs: int | None,
        evals: int,
        repeats: int,
        batch_size: int | None,
        augment: dict,
        cutmix: float,
        normalize: dict | None = None,
        test_batch_size: int = 500,
        num_workers: int = 0,
        max_bank_gb: float = 16.0,
        reference: dict | None = None,
        distilled_dir: str | None = None,
        checkpoint_every: int = 0,
    ):
        from eval.reference import ReferencePoints

        self.student, self.epochs, self.evals, self.repeats = student, epochs, evals, repeats
        self.batch_size = batch_size
        self.augment, self.cutmix = dict(augment or {}), float(cutmix or 0.0)
        self.normalize = dict(normalize or {})
        self.test_batch_size, self.num_workers = test_batch_size, num_workers
        self.max_bank_gb = max_bank_gb
        self.reference = ReferencePoints(**dict(reference or {"enabled": False}))
        self.distilled_dir = distilled_dir
        self.test_images = TestImages(max_bank_gb, num_workers)
        self.checkpoint_every = int(checkpoint_every or 0)
        self.records = StudentRecords()  # nothing recorded until the application attaches a run folder

    def record_in(self, folder: Path, shard, together: bool = False) -> None:
        """Record finished students in ``folder`` (and checkpoint unfinished ones), dealing them
        over the ranks of ``shard``'s job unless ``together`` (one DDP student at a time)."""
        self.records = StudentRecords(Path(folder), shard, together, self.checkpoint_every)

    # -- what subclasses provide ---------------------------------------------------------------
    def epochs_for(self, ipc: int) -> int:
        raise NotImplementedError

    def batch_size_for(self, ipc: int, data: ImageClassificationData, n: int) -> int:
        return min(self.batch_size, n)

    def make_module(
        self, student, data, train: TrainSet, epochs: int, seed: int, prefix: str
    ) -> StudentModule:
        raise NotImplementedError

    def hard_label_protocol(self):
        """The hard-label protocol that DD-Ranking's HLR uses alongside this one."""
        raise NotImplementedError

    def describe(self) -> dict:
        """Everything that decides an accuracy (cache keys of reference points)."""
        return {
            "protocol": self.name,
            "student": arch_name(self.student),
            "epochs": self.epochs,
            "evals": self.evals,
            "repeats": self.repeats,
            "batch_size": self.batch_size,
            "augment": {
                k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in sorted(self.augment.items())
            },
            "cutmix": self.cutmix,
            "normalize": {k: (list(v) if v is not None else None) for k, v in sorted(self.normalize.items())},
        }

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(
        self,
        distilled: DistilledSet,
        data: ImageClassificationData,
        ipc: int,
        seed: int,
        trainer_factory: Callable[..., pl.Trainer],
        logger=None,
    ) -> dict:
        """Train ``repeats`` students on the set; test accuracies, histories, reference points."""
        check_distilled(distilled, data, ipc)
        self.prepare(data, seed, trainer_factory)
        train = TrainSet.from_images(distilled.images, distilled.labels)
        metrics = self.evaluate_set(train, data, ipc, seed, trainer_factory, logger)
        if self.reference.enabled:
            metrics.update(self.reference.compute(self, metrics, train, data, ipc, seed, trainer_factory))
        return metrics

    def prepare(self, data: ImageClassificationData, seed: int, trainer_factory) -> None:
        """Anything needed before students train (the soft-label protocol's teacher)."""

    def evaluate_set(
        self,
        train: TrainSet,
        data: ImageClassificationData,
        ipc: int,
        seed: int,
        trainer_factory,
        logger=None,
        prefix: str = "student",
        epochs: int | None = None,
        repeats: int | None = None,
        train_key: dict | None = None,
    ) -> dict:
        """``repeats`` students on ``train`` (``train_key``: its identity for the records, by
        default a digest of its images)."""
        epochs = epochs or self.epochs_for(ipc)
        repeats = repeats or self.repeats
        start = time.perf_counter()
        seeds = [derive_seed(seed, "student", r) for r in range(repeats)]
        records = self.records
        keys = self.run_keys(train, train_key, epochs, seeds, prefix, data)
        runs: list[Run | None] = [records.read(prefix, r, keys[r]) for r in range(repeats)]
        todo = [r for r in range(repeats) if runs[r] is None and records.mine(prefix, r)]
        for r in todo:
            runs[r] = self.train_recorded(
                train, data, epochs, seeds[r], trainer_factory, logger, prefix, r, keys[r]
            )
        runs = records.gather(prefix, runs, keys)
        for r, run in enumerate(runs):
            if run is not NOT_MINE:
                log.info(f"{prefix} {r + 1}/{repeats}: final {run.final:.4f}, best {run.best:.4f}")
        return self.summarize(
            runs, epochs, self.batch_size_for(ipc, data, len(train)), time.perf_counter() - start
        )

    def run_keys(self, train: TrainSet, train_key, epochs: int, seeds: list[int], prefix: str, data) -> list:
        """What a student's record must match to stand for it (None when nothing is recorded):
        the protocol, the epochs, the seed, the train set and the test split it is scored on
        (its content digest: a test split rewritten or relabelled retrains the student)."""
        from ddcore.data.identity import source_digest

        if self.records.folder is None:
            return [None] * len(seeds)
        settings = {k: v for k, v in self.describe().items() if k != "repeats"}
        digest = train_key if train_key is not None else tensor_digest(train.images, train.labels)
        test = source_digest(data.test)
        return [
            {
                "protocol": settings,
                "epochs": epochs,
                "seed": s,
                "prefix": prefix,
                "train": digest,
                "test": test,
            }
            for s in seeds
        ]

    def train_recorded(self, train, data, epochs, seed, trainer_factory, logger, prefix, r, key) -> Run:
        """Repeat ``r``: trained (resumed from its checkpoint if there is one), then recorded."""
        tic, shard = time.perf_counter(), self.records.shard
        checkpoint = self.records.checkpoint(prefix, r)
        run = self.train_one(
            train, data, epochs, seed, trainer_factory, logger, f"{prefix}/rep{r}", checkpoint
        )
        seconds = time.perf_counter() - tic
        self.records.write(prefix, r, key, run, seconds)
        log.info(f"trained {prefix}/rep{r} on rank {shard.rank}/{shard.world_size} in {seconds:.1f}s")
        return run

    def build_student(self, data: ImageClassificationData) -> torch.nn.Module:
        net = self.student(
            in_channels=data.channels, num_classes=data.num_classes, resolution=data.resolution
        )
        return with_normalization(net, data.channels, self.normalize.get("mean"), self.normalize.get("std"))

    def train_one(
        self,
        train: TrainSet,
        data: ImageClassificationData,
        epochs: int,
        seed: int,
        trainer_factory,
        logger,
        prefix: str,
        checkpoint: Path | None = None,
    ) -> Run:
        module = self.train_module(train, data, epochs, seed, trainer_factory, logger, prefix, checkpoint)
        return Run(module.final_acc, module.best_acc, list(module.history))

    def train_module(
        self,
        train: TrainSet,
        data: ImageClassificationData,
        epochs: int,
        seed: int,
        trainer_factory,
        logger=None,
        prefix: str = "student",
        checkpoint: Path | None = None,
    ) -> StudentModule:
        """One student trained on ``train`` and tested on the real test split (resumed from
        ``checkpoint`` and saved there every ``checkpoint_every`` epochs, when given)."""
        pl.seed_everything(seed % (2**31), verbose=False)
        module = self.make_module(self.build_student(data), data, train, epochs, seed, prefix)
        loader = train.loader(
            self.batch_size_for(self.ipc_of(train, data), data, len(train)), seed, self.num_workers
        )
        test = self.test_images.loader(data.test, self.test_batch_size)
        return fit(
            module,
            loader,
            test,
            epochs,
            self.evals,
            trainer_factory,
            logger,
            prefix,
            checkpoint=checkpoint,
            checkpoint_every=self.checkpoint_every,
        )

    @staticmethod
    def ipc_of(train: TrainSet, data: ImageClassificationData) -> int:
        return max(torch.bincount(train.labels, minlength=data.num_classes).tolist())

    def summarize(self, runs: list[Run], epochs: int, batch_size: int, seconds: float) -> dict:
        (final_mean, final_std) = mean_std([r.final for r in runs])
        (best_mean, best_std) = mean_std([r.best for r in runs])
        return {
            "student/protocol": self.name,
            "student/arch": arch_name(self.student),
            "student/final_acc_mean": final_mean,
            "student/final_acc_std": final_std,
            "student/best_acc_mean": best_mean,
            "student/best_acc_std": best_std,
            "student/final_acc_runs": [r.final for r in runs],
            "student/best_acc_runs": [r.best for r in runs],
            "student/histories": [[[e, a] for e, a in r.history] for r in runs],
            "student/epochs": epochs,
            "student/repeats": len(runs),
            "student/batch_size": batch_size,
            "student/seconds": round(seconds, 1),
        }

    def train_real(
        self,
        data: ImageClassificationData,
        seed: int,
        trainer_factory,
        epochs: int | None = None,
        repeats: int = 1,
        prefix: str = "full",
    ) -> dict:
        """Students trained on the full real train split under this protocol."""
        from eval.reference import data_key

        train = TrainSet.from_source(data.train, self.max_bank_gb, self.num_workers)
        self.prepare(data, seed, trainer_factory)
        ipc = self.ipc_of(train, data)
        return self.evaluate_set(
            train,
            data,
            ipc,
            seed,
            trainer_factory,
            prefix=prefix,
            epochs=epochs,
            repeats=repeats,
            train_key=data_key(data) if self.records.folder is not None else None,
        )

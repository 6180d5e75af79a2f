"""Reference points of an evaluated set and DD-Ranking's scores (docs/protocols.md).

- **full**: students trained on the full real train split with hard labels (the hard-label
  protocol; DD-Ranking's ``full_data_hard_label_acc``);
- **random**: a random real subset of the same IPC (the ``random`` method at the run's seed)
  under the *same* protocol as the set;
- **distilled hard**: the set under the hard-label protocol (the set's own accuracy when that is
  the protocol; an extra run under the soft-label protocol).

    HLR = Acc(full, hard) - Acc(distilled, hard)
    IOR = Acc(distilled, protocol) - Acc(random, protocol)
    LRS = (e^a - e^-1) / (e - e^-1),  a = w * IOR - (1 - w) * HLR   (accuracies as fractions)

Full-data accuracies and the accuracies of evaluated sets are cached as JSON under ``cache_dir``,
keyed by the dataset (with content digests of its train and test images), the protocol's settings
(student included), the IPC, the seed and, for a set, a digest of its pixels and labels; so each is
computed once: the random reference of a ``method=random`` run is that run's own accuracy, and a
soft-label run of a set already evaluated with hard labels reuses that accuracy for HLR.
DD-Ranking takes each run's best test accuracy; ``acc: final`` uses the final one instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

from ddcore.data.base import ImageClassificationData
from ddcore.files import short_hash, write_json
from eval.records import tensor_digest

log = logging.getLogger(__name__)


def hlr(full_hard: float, distilled_hard: float) -> float:
    """Hard label recovery: how far the set is below the full data, both with hard labels."""
    return full_hard - distilled_hard


def ior(distilled: float, random: float) -> float:
    """Improvement over random: the set vs a random real subset of the same size, same protocol."""
    return distilled - random


def lrs(hlr_value: float, ior_value: float, w: float = 0.5) -> float:
    """Label-robust score in [0, 1] (0.5 x 100 = no better than random at zero recovery)."""
    a = w * ior_value - (1 - w) * hlr_value
    return (math.exp(a) - math.exp(-1)) / (math.e - math.exp(-1))


def data_key(data: ImageClassificationData) -> dict:
    """The data's identity: classes, sizes and the content digests of both splits (file sizes and
    modification times, or pixels), so rewritten images never reuse an old accuracy."""
    from ddcore.data.identity import source_digest

    classes = hashlib.sha256("\n".join(data.class_ids).encode()).hexdigest()[:12]
    return {
        "dataset": data.name,
        "resolution": data.resolution,
        "channels": data.channels,
        "classes": classes,
        "train": len(data.train),
        "test": len(data.test),
        "train_digest": source_digest(data.train),
        "test_digest": source_digest(data.test),
    }


class ReferencePoints:
    """Args (``eval.reference``):
    enabled: compute the reference points and scores after each evaluation.
    cache_dir: where computed accuracies are kept (None = recompute every time).
    acc: ``best`` (DD-Ranking) or ``final`` test accuracy of each run.
    w: LRS's weight of IOR against HLR.
    full_epochs: epochs of the full-data students (None = the protocol's ``epochs`` when
        set, else by IPC, i.e. the class size: 300 for ImageNet subsets).
    full_repeats: how many full-data students (their mean is used).
    full_seed: the seed of the full-data students (None = the run's seed).
    """

    def __init__(
        self,
        enabled: bool = True,
        cache_dir: str | None = None,
        acc: str = "best",
        w: float = 0.5,
        full_epochs: int | None = None,
        full_repeats: int = 1,
        full_seed: int | None = 0,
    ):
        if acc not in ("best", "final"):
            raise ValueError(f"reference.acc must be best or final, got {acc!r}")
        self.enabled, self.acc, self.w = bool(enabled), acc, float(w)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.full_epochs, self.full_repeats = full_epochs, int(full_repeats)
        self.full_seed = None if full_seed is None else int(full_seed)

    def key_of(self, metrics: dict) -> float:
        return float(metrics[f"student/{self.acc}_acc_mean"])

    def compute(
        self,
        protocol,
        metrics: dict,
        train,
        data: ImageClassificationData,
        ipc: int,
        seed: int,
        trainer_factory,
    ) -> dict:
        """Reference accuracies and DD-Ranking's scores for a set just evaluated (``metrics``)."""
        hard = protocol.hard_label_protocol()
        distilled = self.key_of(metrics)
        self.store(self.set_key(protocol, train, data, ipc, seed), distilled)
        if hard is protocol:
            distilled_hard = distilled
        else:
            distilled_hard = self.cached(
                self.set_key(hard, train, data, ipc, seed),
                lambda: self.key_of(
                    hard.evaluate_set(train, data, ipc, seed, trainer_factory, prefix="distilled_hard")
                ),
            )
        full_seed = seed if self.full_seed is None else self.full_seed
        full = self.full_accuracy(hard, data, full_seed, trainer_factory)
        random = self.random_accuracy(protocol, data, ipc, seed, trainer_factory)
        h, i = hlr(full, distilled_hard), ior(distilled, random)
        return {
            "reference/acc": self.acc,
            "reference/full_hard_acc": full,
            "reference/random_acc": random,
            "reference/distilled_hard_acc": distilled_hard,
            "ddranking/hlr": h,
            "ddranking/ior": i,
            "ddranking/lrs": lrs(h, i, self.w),
        }

    def full_accuracy(self, hard, data, seed, trainer_factory) -> float:
        epochs = self.full_epochs or hard.epochs  # None: by the IPC of the full data
        # full_repeats counts, not repeats; with full_epochs set the set's epochs do not matter
        ignore = ("repeats", "epochs") if self.full_epochs else ("repeats",)
        settings = {k: v for k, v in hard.describe().items() if k not in ignore}
        key = {
            "kind": "full",
            **data_key(data),
            "protocol": settings,
            "epochs": epochs,
            "repeats": self.full_repeats,
            "seed": seed,
            "acc": self.acc,
        }
        return self.cached(
            key,
            lambda: self.key_of(
                hard.train_real(data, seed, trainer_factory, epochs=epochs, repeats=self.full_repeats)
            ),
        )

    def random_accuracy(self, protocol, data, ipc, seed, trainer_factory) -> float:
        """The random real subset's accuracy, looked up by the subset's indices before any image
        is decoded; on a miss the subset is decoded (uint8) and looked up by its pixels too,
        where a ``method=random`` run of the same seed stored its own accuracy."""
        from ddcore.distilled import random_real_indices, random_real_subset
        from eval.batches import TrainSet

        indices = random_real_indices(data, ipc, seed)

        def by_pixels() -> float:
            subset = random_real_subset(data, ipc, seed)
            train = TrainSet.from_images(subset.images, subset.labels)
            return self.cached(
                self.set_key(protocol, train, data, ipc, seed),
                lambda: self.key_of(
                    protocol.evaluate_set(train, data, ipc, seed, trainer_factory, prefix="random")
                ),
                what="random",
            )

        return self.cached(self.subset_key(protocol, data, indices, ipc, seed), by_pixels, what="random")

    def subset_key(self, protocol, data, indices, ipc: int, seed: int) -> dict:
        """The cache key of a real subset's accuracy: which train images (indices, and their
        content digest) under which protocol; known without decoding an image."""
        return {
            "kind": "random",
            **data_key(data),
            "protocol": protocol.describe(),
            "ipc": ipc,
            "seed": seed,
            "acc": self.acc,
            "indices": short_hash(indices.tolist()),
            "images": data.train.digest(indices.tolist()),
        }

    def set_key(self, protocol, train, data, ipc: int, seed: int) -> dict | None:
        """The cache key of a set's accuracy under ``protocol``: sets with equal pixels and labels
        share it (None for a set streamed from files, which is not hashed)."""
        if train.images is None:
            return None
        return {
            "kind": "set",
            **data_key(data),
            "protocol": protocol.describe(),
            "ipc": ipc,
            "seed": seed,
            "acc": self.acc,
            "set": tensor_digest(train.images, train.labels),
        }

    def path_of(self, key: dict | None) -> Path | None:
        if self.cache_dir is None or key is None:
            return None
        return self.cache_dir / key["dataset"] / f"{key['kind']}-{short_hash(key)}.json"

    def store(self, key: dict | None, value: float) -> None:
        path = self.path_of(key)
        if path is not None and not math.isnan(value):  # nan: a rank that reports nothing
            write_json(path, {"value": value, "key": key})

    def cached(self, key: dict | None, compute, what: str | None = None) -> float:
        """The value stored for ``key``, else ``compute()`` stored under it."""
        what = what or (key or {}).get("kind", "set")
        path = self.path_of(key)
        if path is not None and path.is_file():
            value = json.loads(path.read_text())["value"]
            log.info(f"reference {what} accuracy {value:.4f} from {path}")
            return value
        log.info(f"computing the {what} reference accuracy (cached afterwards)")
        value = float(compute())
        self.store(key, value)
        return value

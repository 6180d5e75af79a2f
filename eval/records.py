"""Each student of an evaluation trained once: recorded when it finishes, resumed from its last
checkpoint when it did not, dealt over the ranks of a multi-process job.

    <run>/students/<prefix>/rep<r>.json      a finished student: accuracies, history, its key
    <run>/checkpoints/<prefix>/rep<r>.ckpt   an unfinished one, every ``checkpoint_every`` epochs

A record counts only for the same key (the protocol's settings, the epochs, the seed, the train
set's digest, the test split's digest): a rerun with other settings or another test split trains
again. Under several processes, repeat ``r`` of ``prefix`` belongs to rank ``(r +
offset(prefix)) % world_size`` (the prefixes start on different ranks, so one repeat each of
``full`` and ``random`` do not land on the same rank); rank 0 waits for the others' records
(``ddcore.distributed.wait_for``), the other ranks go on with their own share and report
nothing. With ``together`` (``trainer=ddp``) every rank trains every student as one, and rank 0
records it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ddcore.distributed import Shard, wait_for
from ddcore.files import short_hash, write_json

log = logging.getLogger(__name__)


@dataclass
class Run:
    """One student: final and best test accuracy, and every (epoch, accuracy) it was tested at."""

    final: float
    best: float
    history: list[tuple[int, float]]


# what a rank reports for a student another rank trains (only rank 0's numbers are reported)
NOT_MINE = Run(math.nan, math.nan, [])


def tensor_digest(*tensors: torch.Tensor | None) -> str:
    """sha256 of the tensors' dtypes, shapes and bytes, hashed in place: ``tobytes()`` would copy
    a set of ImageNet-1K size (7.5 GB at IPC 50) on every rank that keys its students."""
    h = hashlib.sha256()
    for t in tensors:
        if t is not None:
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself, no copy
    return h.hexdigest()[:16]


def history(entries) -> list[tuple[int, float]]:
    """A record's ``[[epoch, accuracy], ...]`` as (int, float) pairs (TypeError/ValueError if not)."""
    return [(int(epoch), float(acc)) for epoch, acc in entries]


@dataclass
class StudentRecords:
    """Args: folder: the run folder (None: nothing recorded, every student trained here).
    shard: this process among the job's. together: every rank trains every student (DDP).
    checkpoint_every: epochs between checkpoints of an unfinished student (0 = none)."""

    folder: Path | None = None
    shard: Shard = field(default_factory=Shard)
    together: bool = False
    checkpoint_every: int = 0

    @property
    def shared(self) -> bool:
        """Whether the students are dealt over several ranks."""
        return self.shard.world_size > 1 and not self.together

    def owner(self, prefix: str, r: int) -> int:
        if not self.shared:
            return self.shard.rank
        offset = int(hashlib.sha256(prefix.encode()).hexdigest(), 16)
        return (r + offset) % self.shard.world_size

    def mine(self, prefix: str, r: int) -> bool:
        return self.owner(prefix, r) == self.shard.rank

    def record_path(self, prefix: str, r: int) -> Path:
        return Path(self.folder) / "students" / prefix / f"rep{r}.json"

    def checkpoint(self, prefix: str, r: int) -> Path | None:
        if self.folder is None or self.checkpoint_every <= 0:
            return None
        return Path(self.folder) / "checkpoints" / prefix / f"rep{r}.ckpt"

    def read(self, prefix: str, r: int, key: dict) -> Run | None:
        if self.folder is None:
            return None
        path = self.record_path(prefix, r)
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):  # absent, or cut short by a crash: trained again
            return None
        if not isinstance(record, dict) or record.get("key") != short_hash(key):
            return None
        try:
            return Run(float(record["final"]), float(record["best"]), history(record["history"]))
        except (KeyError, TypeError, ValueError):  # a record of some other shape: not ours to trust
            log.warning(f"{path} is not a student record; that student is trained again")
            return None

    def write(self, prefix: str, r: int, key: dict, run: Run, seconds: float) -> None:
        """Record a finished student (rank 0 for a DDP student) and drop its checkpoint."""
        if self.folder is None or (self.together and not self.shard.is_main):
            return
        record = {
            "key": short_hash(key),
            "final": run.final,
            "best": run.best,
            "history": [list(h) for h in run.history],
            "rank": self.shard.rank,
            "seconds": round(seconds, 2),
        }
        write_json(self.record_path(prefix, r), record)
        checkpoint = self.checkpoint(prefix, r)
        if checkpoint is not None:
            checkpoint.unlink(missing_ok=True)

    def gather(self, prefix: str, runs: list[Run | None], keys: list[dict]) -> list[Run]:
        """``runs`` with the other ranks' students filled in: read from their records on rank
        0 (waiting for them, bounded), ``NOT_MINE`` on the other ranks."""
        missing = [r for r, run in enumerate(runs) if run is None]
        if not missing:
            return runs
        if not self.shard.is_main:
            return [NOT_MINE if run is None else run for run in runs]

        def still_missing() -> list[int]:
            for r in list(missing):
                runs[r] = self.read(prefix, r, keys[r])
            missing[:] = [r for r in missing if runs[r] is None]
            return missing

        wait_for(
            still_missing,
            owner=lambda r: self.owner(prefix, r),
            what="students",
            name=lambda r: f"{prefix}/rep{r}",
            poll_s=2.0,
            log=log,
        )
        return runs

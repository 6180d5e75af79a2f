"""Several processes of one job (torchrun, ``torch.distributed``, a submitit SLURM job with
several tasks): who is who, one process group, one run folder, bounded waits on the others.

- ``current_shard()``: this process's rank, world size and local rank, from an initialized
  ``torch.distributed`` group or the launcher's environment (``RANK``/``WORLD_SIZE``/
  ``LOCAL_RANK`` of torchrun; ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` in a submitit
  job). ``bind_device`` gives each rank its own GPU, ``cuda:<local rank>``.
- ``init_process_group()``: ``run.py`` calls it before Hydra composes the config when the
  launcher started several processes. Rank 0's clock is shared at once, so the time-stamped run
  folder (``${dd.run_stamp:...}`` in ``conf/hydra/default.yaml``) is the same on every rank.
  The group (gloo, plus NCCL for CUDA tensors) is also the one ``trainer=ddp`` trains over.
- ``team(folder, timeout_s)``: while a task runs, each rank touches ``<folder>/rank<r>.alive``
  every few seconds. ``wait_for`` polls the shared disk for work of other ranks (class markers,
  student records), never a collective (after a resume one rank may have hours more work than
  another), and stops with one line once the owner of a missing piece has shown no sign of life
  for ``timeout_s`` seconds: a dead rank stops the others within the timeout, and the folder
  stays as it is, to be resumed by the same command.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterator

from ddcore.errors import UserError
from ddcore.files import atomic_write


# -- who is who -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self):
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world size {self.world_size}")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, label: int) -> bool:
        return label % self.world_size == self.rank


def launcher_shard() -> Shard:
    """The place the launcher's environment gives this process (no torch import)."""
    env = os.environ
    local = int(env.get("LOCAL_RANK", env.get("SLURM_LOCALID", 0)))
    if "RANK" in env and "WORLD_SIZE" in env:
        return Shard(int(env["RANK"]), int(env["WORLD_SIZE"]), local)
    # SLURM_NTASKS is also set in a plain sbatch script that starts one process; only
    # submitit's srun step starts one process per task.
    if env.get("SUBMITIT_EXECUTOR") == "slurm" and "SLURM_PROCID" in env:
        return Shard(int(env["SLURM_PROCID"]), int(env.get("SLURM_NTASKS", 1)), local)
    return Shard()


def current_shard() -> Shard:
    """This process's place among the processes of the job (see the module docstring)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Shard(dist.get_rank(), dist.get_world_size(), launcher_shard().local_rank)
    return launcher_shard()


def bind_device(device, shard: Shard | None = None):
    """The GPU of this process (``cuda:<local rank>``) when ``device`` is CUDA; else ``device``."""
    import torch

    if device.type != "cuda":
        return device
    index = (shard or current_shard()).local_rank % max(1, torch.cuda.device_count())
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


# -- one process group, one clock -------------------------------------------------------------------
_AGREED_TIME: float | None = None  # rank 0's clock when the group formed


def slurm_rendezvous(env=os.environ) -> None:
    """MASTER_ADDR/MASTER_PORT for a submitit job, as Lightning's SLURMEnvironment derives them
    (first node of the job, a port from the job id), unless already set."""
    if "MASTER_ADDR" not in env:
        from lightning.fabric.plugins.environments import SLURMEnvironment

        nodes = env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", "127.0.0.1"))
        env["MASTER_ADDR"] = SLURMEnvironment.resolve_root_node_address(nodes)
    if "MASTER_PORT" not in env:
        env["MASTER_PORT"] = str(15000 + int(env.get("SLURM_JOB_ID", "0")[-4:] or 0))


def init_process_group(timeout_s: float = 1800.0) -> bool:
    """Join the job's process group when the launcher started several processes (else nothing:
    a single process never imports ``torch.distributed`` here). Returns whether it joined."""
    global _AGREED_TIME
    shard = launcher_shard()
    if shard.world_size == 1:
        return False
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
        slurm_rendezvous()
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise UserError(
            f"rank {shard.rank} of {shard.world_size}: RANK and WORLD_SIZE are set but "
            "MASTER_ADDR/MASTER_PORT are not (launch with torchrun, or set both)"
        )
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(shard.local_rank % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"  # gloo for CPU tensors, NCCL for DDP's CUDA gradients
    dist.init_process_group(
        backend,
        init_method="env://",
        rank=shard.rank,
        world_size=shard.world_size,
        timeout=timedelta(seconds=timeout_s),
    )
    clock = [time.time()]
    dist.broadcast_object_list(clock, src=0, device=torch.device("cpu"))
    _AGREED_TIME = float(clock[0])
    return True


def run_stamp(fmt: str = "%Y-%m-%d_%H-%M-%S") -> str:
    """``time.strftime(fmt)``: rank 0's clock at the start of a multi-process job, else now."""
    return (
        time.strftime(fmt, time.localtime(_AGREED_TIME)) if _AGREED_TIME is not None else time.strftime(fmt)
    )


# -- bounded waits ------------------------------------------------------------------------------
@dataclass
class Team:
    """The ranks of a running task, seen through their ``rank<r>.alive`` files in ``folder``."""

    folder: Path
    shard: Shard
    timeout_s: float | None
    started: float = field(default_factory=time.time)

    def alive_file(self, rank: int) -> Path:
        return self.folder / f"rank{rank}.alive"

    def beat(self) -> None:
        path = self.alive_file(self.shard.rank)
        path.touch()
        os.utime(path)

    def silent_for(self, rank: int) -> float:
        """Seconds since rank ``rank`` last showed life (counted from this process's start at
        most: a file left by an earlier attempt does not count against a rank still starting)."""
        try:
            last = self.alive_file(rank).stat().st_mtime
        except OSError:
            last = 0.0
        return time.time() - max(last, self.started)


_TEAM: Team | None = None


@contextlib.contextmanager
def team(folder: Path, timeout_s: float | None, shard: Shard | None = None) -> Iterator[Team | None]:
    """Show this rank alive in ``folder`` while the block runs (nothing for a single process)."""
    global _TEAM
    shard = shard or current_shard()
    if shard.world_size == 1:
        yield None
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    member = Team(folder, shard, float(timeout_s) if timeout_s else None)
    member.beat()
    stop = threading.Event()
    every = min(10.0, max(0.2, (member.timeout_s or 60.0) / 6))

    def beat_until_stopped() -> None:
        while not stop.wait(every):
            with contextlib.suppress(OSError):
                member.beat()

    thread = threading.Thread(target=beat_until_stopped, name="dd-heartbeat", daemon=True)
    previous, _TEAM = _TEAM, member
    thread.start()
    try:
        yield member
    finally:
        stop.set()
        thread.join()
        _TEAM = previous


def wait_for(
    pending: Callable[[], list],
    owner: Callable[[object], int],
    what: str,
    name: Callable[[object], str] = str,
    poll_s: float = 5.0,
    report_s: float = 300.0,
    log=None,
) -> None:
    """Poll ``pending()`` (the pieces other ranks still owe) until it is empty. Inside a ``team``
    with a timeout, give up with one line once an owner has been silent that long."""
    left, member, last_report = pending(), _TEAM, time.time()
    if member is not None and member.timeout_s:
        poll_s = min(poll_s, max(0.1, member.timeout_s / 4))
    while left:
        if member is not None and member.timeout_s:
            silent = sorted({owner(x) for x in left if member.silent_for(owner(x)) > member.timeout_s})
            if silent:
                raise missing_error(member, silent[0], [x for x in left if owner(x) == silent[0]], what, name)
        time.sleep(poll_s)
        left = pending()
        if left and log is not None and time.time() - last_report > report_s:
            last_report = time.time()
            log.info(f"waiting for {len(left)} {what} of other ranks (e.g. {name(left[0])})")


def missing_error(member: Team, rank: int, items: list, what: str, name) -> UserError:
    shown = ", ".join(name(x) for x in items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
    return UserError(
        f"rank {rank} of {member.shard.world_size} has shown no sign of life for "
        f"{member.timeout_s:g}s (cluster.timeout_s) and its {what} {shown} are missing: it died "
        "or hangs; run the same command again (same hydra.run.dir) to resume"
    )


def main_first(name: str, make: Callable[[], object]):
    """``make()`` on rank 0 first, then on the other ranks (a generator trained into a cache,
    a teacher: once, then read), in a ``team``; just ``make()`` otherwise."""
    member = _TEAM
    if member is None:
        return make()
    flag = member.folder / f"{name}.ready"
    stamp = str(_AGREED_TIME)  # this attempt's, not a flag an earlier attempt left
    if member.shard.is_main:
        value = make()
        atomic_write(flag, lambda tmp: tmp.write_text(stamp))
        return value

    def not_ready() -> list:
        try:
            return [] if flag.read_text() == stamp else [name]
        except OSError:
            return [name]

    wait_for(not_ready, lambda _: 0, "preparation step")
    return make()

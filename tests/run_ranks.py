"""Run ``run.py`` jobs of one or several processes, each rank forked from one warm interpreter.

``python tests/run_ranks.py jobs.json`` reads ``[{"world": 2, "argv": [...], "cwd": "...",
"kill": {"rank": 1, "once": "<path>"}}]`` and runs the jobs one after the other. The ranks of a
job run side by side with the environment torchrun gives its workers (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``GROUP_RANK``, ``MASTER_ADDR``/``MASTER_PORT``...; none for ``world`` 1);
``kill`` sends SIGKILL to that rank as soon as ``once`` exists. Prints one JSON list, per job a
list per rank of ``{"rc": int, "output": str, "after_kill": float | null}`` (output: stdout and
stderr together; after_kill: seconds from the kill to the rank's exit). The imports are paid once
for every job (tests/run_many.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_many import run_and_exit, warm_imports  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_rank(job: dict, rank: int, port: int) -> tuple[int, int]:
    """Fork one rank running ``run.py <argv>``; returns (pid, read end of its output)."""

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_end)
        return pid, read_end
    os.close(read_end)
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    world = job.get("world", 1)
    if world > 1:
        os.environ.update(
            RANK=str(rank),
            WORLD_SIZE=str(world),
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(world),
            GROUP_RANK="0",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
    run_and_exit(job["argv"], job.get("cwd"))


def run_job(job: dict) -> list[dict]:
    port, world = free_port(), job.get("world", 1)
    ranks = [start_rank(job, rank, port) for rank in range(world)]
    outputs = [b""] * world

    def read(i: int, fd: int) -> None:
        with os.fdopen(fd, "rb") as pipe:
            outputs[i] = pipe.read()

    readers = [threading.Thread(target=read, args=(i, fd)) for i, (_, fd) in enumerate(ranks)]
    for reader in readers:
        reader.start()
    killed_at, kill = None, job.get("kill")
    if kill:
        pid = ranks[kill["rank"]][0]
        while not Path(kill["once"]).exists() and os.waitpid(pid, os.WNOHANG) == (0, 0):
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
    results = []
    for (pid, _), reader in zip(ranks, readers):
        try:
            _, status = os.waitpid(pid, 0)
            rc = os.waitstatus_to_exitcode(status)
        except ChildProcessError:  # reaped by the kill loop above
            rc = -signal.SIGKILL
        ended = time.time()
        reader.join()
        results.append({"rc": rc, "after_kill": None if killed_at is None else ended - killed_at})
    for result, output in zip(results, outputs):
        result["output"] = output.decode(errors="replace")
    return results


if __name__ == "__main__":
    jobs = json.loads(Path(sys.argv[1]).read_text())
    warm_imports()
    import lightning.pytorch  # noqa: F401
    import torch.distributed  # noqa: F401

    print(json.dumps([run_job(job) for job in jobs]))

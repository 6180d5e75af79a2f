"""How long ``make reference`` would take on recorded job times: replays the driver's own
scheduling (``can_start``, ``first_to_start``, the two phases, ``RUN_FIRST``) with N workers.

    python experiments/replay_schedule.py --runs results/reference_runs [--fallback OTHER_RUNS]
        [--workers 2] [--startup 2] [--extended]

A job's time is its ``job.json`` ``seconds`` (from ``--fallback`` where ``--runs`` has none)
plus ``--startup`` seconds (a forked job process's start, outside ``seconds``). It prints the
replayed wall time; jobs with no time in either folder are left out, and it says how many.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import reference as R  # noqa: E402
from experiments import reference_plan as P  # noqa: E402


def timed_jobs(names: list[str], folders: list[Path], aliases: dict, startup: float) -> tuple[list, int]:
    jobs, missing = [], 0
    for name in names:
        if name in aliases:
            continue
        records = [P.read_json(f / name / "job.json") for f in folders]
        record = next((r for r in records if "seconds" in r), None)
        if record is None:
            missing += 1
            continue
        job = P.Job(name, record["overrides"])
        sets = [o.split("=", 1)[1] for o in record["overrides"] if o.startswith("eval.distilled_dir=")]
        if sets:  # <dataset>/<protocol>/ipc<n>/<row>[/seed<s>]/distilled
            parts = Path(sets[0]).parent.parts
            job.source = "/".join(parts[-5:] if parts[-1].startswith("seed") else parts[-4:])
        else:
            job.source = None
        job.seconds = record["seconds"] + startup
        jobs.append(job)
    return jobs, missing


def replay(todo: list, warm: set, workers: int, now: float) -> float:
    pending, running = list(todo), []  # running: (end, job)
    while pending or running:
        while len(running) < workers:
            ready = [j for j in pending if R.can_start(j, pending, [r[1] for r in running], warm)]
            job = R.first_to_start(ready, warm)
            if job is None:
                break
            pending.remove(job)
            running.append((now + job.seconds, job))
        running.sort(key=lambda r: r[0])
        now, job = running.pop(0)
        warm.update(R.cache_groups(job))
    return now


def replayed_seconds(runs: Path, fallback: Path | None, workers: int, startup: float, extended: bool):
    """(the replayed wall time in seconds, the number of planned jobs without a recorded time)"""
    folders = [runs] + ([fallback] if fallback else [])
    aliases = P.read_json(runs / "aliases.json")
    p = P.plan(False, extended)
    order = P.run_order(list(p["datasets"]))
    sweeps = [j.name for d in order for j in P.sweep_jobs(d, p)]
    rest = [j.name for d in order for j in P.other_jobs(d, p, ["method.t_sg=25"])]
    warm, missing, now = set(), 0, 0.0
    for names in (sweeps, rest):
        jobs, lost = timed_jobs(names, folders, aliases, startup)
        missing += lost
        now = replay(jobs, warm, workers, now) if jobs else now
    return now, missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--fallback", type=Path, default=None, help="job times for jobs --runs lacks")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--startup", type=float, default=2.0, help="seconds a job process takes to start")
    parser.add_argument("--extended", action="store_true", help="with the [latent] rows")
    args = parser.parse_args(argv)
    seconds, missing = replayed_seconds(args.runs, args.fallback, args.workers, args.startup, args.extended)
    hours = seconds / 3600
    print(f"replayed wall time {hours:.2f} h, {args.workers} workers ({missing} jobs without a time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The reference experiment's driver: runs the plan's jobs (``experiments/reference_plan.py``),
then writes the report (``experiments/reference_report.py``).

    python experiments/reference.py            # `make reference`: every job, then the report
    python experiments/reference.py --smoke    # `make reference-smoke`: a tiny subset, same path
    python experiments/reference.py --report   # rebuild the report from finished jobs

Jobs are composed through Hydra's compose API. With ``--workers 1`` they run in this process
one after another; with more, each in a process of its own, forked from a worker that imported
the framework once. A job is finished when its folder holds ``metrics.json`` and a ``job.json``
with the same overrides and composed configuration; a rerun skips finished jobs and resumes a
half-distilled one class by class. The full run's folder, ``results/reference_runs/``, is
committed with each job's records and set grid (not the sets), so a fresh clone rebuilds the
report and resumes where the last run stopped.

Phases: every dataset's t_SG and lam sweeps on its validation split (the first job of each
dataset also builds its shared generator cache), then all the other jobs: the method tables
(MGD^3 "best" at the sweeps' choice), the ablations and the schedule check. In each phase the
datasets' jobs run side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from experiments.reference_plan import (  # noqa: E402
    DATASETS,
    PAPER_SETTING,
    ROOT,
    SET_OF,
    Job,
    best_setting,
    other_jobs,
    plan,
    read_json,
    run_order,
    sweep_jobs,
)

os.environ.setdefault("PROJECT_ROOT", str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def resolve_jobs(jobs: list[Job], runs: Path, aliases: dict[str, str], seen: dict[str, str]) -> list[Job]:
    """The jobs to run: one per configuration. A job whose composed config equals an earlier
    one's (say MGD^3's paper defaults and the sweep's t_SG = 25) is not run again; ``aliases``
    maps its name to the job that holds its results (the report reads them there); ``seen``
    maps the configurations planned so far to their jobs."""
    unique = []
    for job in jobs:
        sources = [o.split(SET_OF, 1)[1] for o in job.overrides if SET_OF in o]
        job.source = aliases.get(sources[0], sources[0]) if sources else None
        job.overrides = [set_folder(o, runs, aliases) for o in job.overrides]
        if job.same_as:
            aliases[job.name] = aliases.get(job.same_as, job.same_as)
            continue
        digest = job.config = config_key(job.overrides, job.source)  # one compose per job
        if digest in seen:
            aliases[job.name] = seen[digest]
            continue
        seen[digest] = job.name
        unique.append(job)
    return unique


def set_folder(override: str, runs: Path, aliases: dict[str, str]) -> str:
    """``key=@set:<job>`` -> ``key=<runs>/<the job holding its results>/distilled``."""
    if SET_OF not in override:
        return override
    key, name = override.split("=", 1)[0], override.split(SET_OF, 1)[1]
    return f"{key}={runs / aliases.get(name, name) / 'distilled'}"


def config_key(overrides: list[str], source: str | None = None) -> str:
    """A digest of the composed configuration that does not depend on where the checkout lies:
    interpolations unresolved, without ``paths``, and the evaluated set named by its job
    (``source``) instead of its folder; equal configurations resolve equally."""
    from omegaconf import OmegaConf

    from ddcore.files import short_hash

    cfg = OmegaConf.to_container(compose(overrides, Path("/job")), resolve=False)
    cfg.pop("paths", None)
    if source:
        cfg["eval"]["distilled_dir"] = SET_OF + source
    return short_hash(cfg)


# -- running -------------------------------------------------------------------------------
def compose(overrides: list[str], folder: Path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(
            "config",
            overrides=["logger=csv", *overrides, f"hydra.run.dir={folder}"],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(folder)
        del cfg["hydra"]  # as @hydra.main hands it to run.py's main
    return cfg


def run_job(job: Job, runs: Path, source_seconds: float = 0.0) -> dict:
    """What ``python run.py <overrides>`` does, in this process (``source_seconds``: the time
    spent distilling its source set again first, kept in its record)."""
    from ddapp.config_checks import check_config
    from ddapp.jobs import build, close_loggers, quiet_lightning
    from ddcore.errors import StorageError, UserError

    folder = job.folder(runs)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = compose(job.overrides, folder)
    check_config(cfg)
    quiet_lightning()
    start = time.perf_counter()
    record = {"overrides": job.overrides, "config": job.config}
    try:
        metrics = build(cfg.task)(cfg)
    except StorageError:  # a full disk, an unreadable cache: the job fails, a rerun retries it
        raise
    except UserError as exc:  # the dataset cannot take this setting: say so in the report, go on
        print(f"  not applicable: {exc}", flush=True)
        record["error"], metrics = str(exc), {}
    finally:
        close_loggers()
    record["seconds"] = round(time.perf_counter() - start, 1)
    if source_seconds:
        record["source_seconds"] = round(source_seconds, 1)
    record["ended"] = round(time.time(), 1)  # with seconds: the wall time of parallel runs
    (folder / "job.json").write_text(json.dumps(record, indent=1))
    return metrics


def run_with_source(job: Job, runs: Path, source: Job | None) -> None:
    """Run ``job``; a job that evaluates another's set whose ``distilled/`` is gone (the committed
    runs folder keeps only records) first re-runs that job: distillation is deterministic, so
    its students come out as recorded, and its record is kept as it was (its time is the
    original run's; the re-run's is this job's ``source_seconds``). A re-run whose students
    differ replaces the record, and says so."""
    extra = 0.0
    folder = source.folder(runs) if source is not None else None
    marker = folder / REDISTILLING if folder is not None else None
    if folder is not None and (marker.is_file() or not (folder / "distilled" / "manifest.json").is_file()):
        # a re-run stopped part-way left a set (and student checkpoints) its record did not measure
        print(f"  distilling {source.name} again for it", flush=True)
        if not marker.is_file():  # else a stopped re-run's: the records before it
            marker.write_text(
                json.dumps({n: (folder / n).read_text() for n in RECORDS if (folder / n).is_file()})
            )
        for part in ("distilled", "checkpoints", "students"):
            shutil.rmtree(folder / part, ignore_errors=True)
        tic = time.perf_counter()
        run_job(source, runs)
        extra = time.perf_counter() - tic
        kept = json.loads(marker.read_text())  # the record as it was before any stopped re-run
        before = json.loads(kept.get("metrics.json", "{}"))
        if all(before.get(k) == read_json(folder / "metrics.json").get(k) for k in STUDENTS):
            for name, text in kept.items():
                (folder / name).write_text(text)
        else:
            print(f"  {source.name}: the re-run's students differ from its record; recorded anew", flush=True)
        marker.unlink()
    run_job(job, runs, source_seconds=extra)


RECORDS = ("job.json", "metrics.json")
REDISTILLING = "redistilling.json"  # a source re-run in progress: the records it must keep
STUDENTS = ("student/final_acc_runs", "student/best_acc_runs")  # what a re-run must reproduce


def progress(i: int, todo: int, started: float, seconds: float) -> str:
    rate = (i + 1) / (time.perf_counter() - started)
    return (
        f"done in {seconds:.0f} s; {rate * 3600:.0f} jobs/h, "
        f"ETA for this phase {(todo - i - 1) / rate / 60:.1f} min"
    )


def run_all(
    jobs: list[Job],
    runs: Path,
    done_before: int,
    total: int,
    by_name: dict[str, Job],
    workers: int = 1,
    warm: set | None = None,
) -> bool:
    """Run the unfinished jobs, printing progress with the rate and ETA of this phase; with
    ``workers`` > 1 in that many processes at once (``run_parallel``). False if a job failed."""
    todo = [j for j in jobs if not j.finished(runs)]
    first = done_before + len(jobs) - len(todo) + 1
    if workers > 1:
        return run_parallel(todo, runs, first, total, by_name, workers, set() if warm is None else warm)
    started = time.perf_counter()
    for i, job in enumerate(todo):
        print(f"[{first + i}/{total}] {job.name}", flush=True)
        t0 = time.perf_counter()
        run_with_source(job, runs, by_name.get(job.source) if job.source else None)
        print(f"  {progress(i, len(todo), started, time.perf_counter() - t0)}", flush=True)
    return True


# methods whose first job builds a cache every later job of its dataset and generator reads:
# patch selection's scores of every train image, Minimax's fine-tuned weights, RDED's crop scores
SHARED_CACHES = ("method=patchsel", "method=minimax", "method=rded")


def cache_groups(job: Job) -> list[tuple[str, ...]]:
    """The shared things a job builds on first use: the full-data reference per dataset and
    protocol (a soft-label job reads the hard-label one too, for HLR and for a source set it
    distils again), the teacher for soft labels, the generator's caches (the latent one's real
    latents); and for patch selection the score cache per dataset and generator (both protocols
    read it: its first job scores every train image, and a second one started beside it would
    score them all again). The full-data reference does not depend on the generator: the pixel
    and the latent rows' first jobs would each train it."""

    def pick(*keys: str) -> tuple[str, ...]:
        return tuple(o for o in job.overrides if o.startswith(keys))

    groups = [pick("dataset=", "eval="), pick("dataset=", "generator=")]
    if "eval=soft_label" in job.overrides:
        groups.append((*pick("dataset="), "eval=hard_label"))
    for method in SHARED_CACHES:
        if method in job.overrides:
            groups.append((method, *pick("dataset=", "generator=")))
    return groups


def can_start(job: Job, pending: list[Job], running: list[Job], warm: set) -> bool:
    """Whether ``job`` may start now: the job whose set it evaluates is done, and none of its
    cache groups is being built by a running job (a group is ``warm`` once a job of it finished)."""
    if job.source and any(job.source == j.name for j in pending + running):
        return False
    busy = {g for r in running for g in cache_groups(r)}
    return all(g in warm or g not in busy for g in cache_groups(job))


def first_to_start(ready: list[Job], warm: set) -> Job | None:
    """Of the jobs that may start, the first that builds a shared cache (patch scores of all
    train images, a latent generator's real latents, a full-data reference): those are the
    long jobs, and others wait for them, so they start as early as possible; patch scoring
    first of them (every train image: the longest job of a dataset)."""

    def cold(job: Job) -> bool:
        return any(g not in warm for g in cache_groups(job))

    def order(job: Job) -> tuple[bool, bool]:
        return not (cold(job) and "method=patchsel" in job.overrides), not cold(job)

    return min(ready, key=order, default=None)


def run_parallel(
    todo: list[Job], runs: Path, first: int, total: int, by_name: dict[str, Job], workers: int, warm: set
) -> bool:
    """Run ``todo`` in ``workers`` processes of ``cpu_count // workers`` threads each (1 on the
    2-core machine, as the committed runs). A job starts once the job whose set it evaluates has
    finished, and the first job of each of its ``cache_groups`` runs alone in that group, so the
    teacher, the full-data references and the patch scores are built once (``warm``: the groups
    built so far, kept from one call to the next). Each worker imports the framework once and
    forks a fresh process per job (``serve``); each job's output goes to its ``job.log``. A
    failed job stops new starts; the running ones finish, and the rerun resumes."""
    import subprocess
    from multiprocessing.connection import wait

    env = dict(os.environ)
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    env.setdefault("OMP_NUM_THREADS", threads)
    env.setdefault("MKL_NUM_THREADS", env["OMP_NUM_THREADS"])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", "--runs", str(runs)]
    pool = [
        subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(min(workers, len(todo)))
    ]
    pending, running = list(todo), {}  # running: worker -> (job, start)
    started, finished, failed, launched = time.perf_counter(), 0, [], 0

    def ready(job: Job) -> bool:
        return can_start(job, pending, [r[0] for r in running.values()], warm)

    try:
        while running or (pending and not failed):
            for worker in [w for w in pool if w not in running]:
                job = None if failed else first_to_start([j for j in pending if ready(j)], warm)
                if job is None:
                    break
                pending.remove(job)
                spec = {"job": job.__dict__, "source": by_name[job.source].__dict__ if job.source else None}
                worker.stdin.write(json.dumps(spec) + "\n")
                worker.stdin.flush()
                running[worker] = (job, time.perf_counter())
                print(f"[{first + launched}/{total}] {job.name} (started)", flush=True)
                launched += 1
            if not running:
                break
            for out in wait([w.stdout for w in running]):
                worker = next(w for w in running if w.stdout is out)
                job, t0 = running.pop(worker)
                answer = out.readline().strip()
                code = int(answer) if answer.lstrip("-").isdigit() else -1  # "": the worker died
                if code:
                    failed.append(job.name)
                    log = job.folder(runs) / "job.log"
                    print(f"  {job.name} failed (exit {code}); its output: {log}", flush=True)
                    if not answer:
                        pool.remove(worker)
                    continue
                warm.update(cache_groups(job))
                seconds = time.perf_counter() - t0
                print(f"  {job.name} {progress(finished, len(todo), started, seconds)}", flush=True)
                finished += 1
    finally:
        for worker in pool:
            worker.stdin.close()
            worker.wait()
    if failed:
        print(f"{len(failed)} job(s) failed: {', '.join(failed)}; a rerun resumes the rest", flush=True)
    return not failed


# what every job imports: a worker imports them once, the processes it forks start with them
PRELOAD = (
    *("torch", "torchvision", "lightning", "diffusers", "faiss", "matplotlib"),
    *("sklearn.cluster", "sklearn.datasets", "sklearn.model_selection", "ddapp.tasks", "ddapp.config_checks"),
)


def serve(runs: Path) -> int:
    """A worker of ``run_parallel``: imports the framework once (about 5 s a process), then for
    each job read from stdin forks a process that runs it (``run_one``, its output to the job's
    ``job.log``) and answers its exit status on stdout. A forked process starts with the
    imported modules and nothing computed, as a fresh one would."""
    import importlib

    import ddcore  # noqa: F401  (torchvision import fix, before torchvision)

    for name in PRELOAD:
        importlib.import_module(name)
    for line in sys.stdin:
        spec = json.loads(line)
        folder = runs / spec["job"]["name"]
        folder.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:  # the job's process
            code = 1
            try:
                log = os.open(folder / "job.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                os.dup2(log, 1)
                os.dup2(log, 2)
                code = run_one(line, runs)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
    return 0


def run_one(spec: str, runs: Path) -> int:
    """One job of ``run_parallel``, in its own process; its log (progress with rate and ETA)
    goes to stdout, the job's ``job.log``, formatted as ``run.py``'s."""
    import logging

    import ddcore  # noqa: F401  (torchvision import fix)
    from ddapp.schemas import register

    register()
    fmt = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
    logging.basicConfig(level=logging.INFO, format=fmt, stream=sys.stdout, force=True)
    spec = json.loads(spec)
    run_with_source(Job(**spec["job"]), runs, Job(**spec["source"]) if spec["source"] else None)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny subset (CI)")
    parser.add_argument("--report", action="store_true", help="only rebuild the report")
    parser.add_argument("--runs", type=Path, default=None, help="job folders (results/reference_runs)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (results)")
    parser.add_argument(
        "--datasets", nargs="+", choices=DATASETS, default=None, help="run only these datasets' jobs"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="jobs run at once, each in its own process (default 1)"
    )
    parser.add_argument(
        "--extended",
        action="store_true",
        help="also the latent generator's rows at IPC 1, 10 and 50 (make reference-extended)",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # a worker (run_parallel)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.runs)
    if args.workers < 1:
        print(f"--workers {args.workers}: give 1 or more jobs to run at once", file=sys.stderr)
        return 2
    p = plan(args.smoke, args.extended)
    # the full run's folder is committed (records and grids only: .gitignore keeps the sets out)
    runs = (
        args.runs or ROOT / ("logs/reference-smoke" if args.smoke else "results/reference_runs")
    ).resolve()
    out = args.out or (runs / "results" if args.smoke else ROOT / "results")
    import ddcore  # noqa: F401  (torchvision import fix)
    from ddapp.schemas import register

    register()
    aliases_file = runs / "aliases.json"
    # every alias is worked out again (a record of an earlier run may name a set its sweeps chose)
    aliases, seen, by_name, warm = {}, {}, {}, set()
    chosen = (
        [] if args.report else run_order([d for d in p["datasets"] if d in (args.datasets or p["datasets"])])
    )
    # first every dataset's sweeps (MGD^3 "best" needs them), then every other job
    sweeps = {d: resolve_jobs(sweep_jobs(d, p), runs, aliases, seen) for d in p["datasets"]}
    by_name.update((j.name, j) for d in sweeps for j in sweeps[d])
    todo = [j for d in chosen for j in sweeps[d]]
    ok = run_all(todo, runs, 0, len(todo), by_name, args.workers, warm) if todo else True
    planned, rest = [], {}
    for dataset in p["datasets"]:
        planned += [j.name for j in sweep_jobs(dataset, p)]
        best = best_setting(
            lambda n: read_json(runs / aliases.get(n, n) / "metrics.json"), dataset, p["t_sg"], p["lams"]
        )
        jobs = other_jobs(dataset, p, best[1] if best else PAPER_SETTING)
        planned += [j.name for j in jobs]
        rest[dataset] = resolve_jobs(jobs, runs, aliases, seen)
        by_name.update((j.name, j) for j in rest[dataset])
    runs.mkdir(parents=True, exist_ok=True)
    aliases_file.write_text(json.dumps(aliases, indent=1, sort_keys=True))
    todo = [j for d in chosen for j in rest[d]]
    if todo and ok:
        done = sum(len(sweeps[d]) for d in chosen)
        ok = run_all(todo, runs, done, done + len(todo), by_name, args.workers, warm)
    from experiments.reference_report import write_report

    stale = [
        n for n, j in by_name.items() if (j.folder(runs) / "metrics.json").is_file() and not j.finished(runs)
    ]
    path = write_report(runs, out, p, aliases, planned, stale)
    print(f"report: {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""The reference experiment: the papers' comparisons on real data, as the project's own tables.

    python experiments/reference.py            # `make reference`: every job, then the report
    python experiments/reference.py --smoke    # `make reference-smoke`: a tiny subset, same path
    python experiments/reference.py --report   # rebuild results/reference.md from finished jobs

Every job is one ``run.py`` configuration: ``experiment=reference`` (the shared student
schedule, chosen before any method was compared) plus the job's own overrides, composed through
Hydra's compose API. With ``--workers 1`` the jobs run in this process one after another; with
more, each in a process of its own, forked from a worker that imported the framework once.
A job is finished when its folder holds ``metrics.json`` and a ``job.json`` with the same
overrides; a rerun skips finished jobs and resumes a half-distilled one class by class. The full
run's folder, ``results/reference_runs/``, is committed with each job's records and set grid
(not the sets), so a fresh clone rebuilds the report and resumes where the last run stopped.

Phases: every dataset's t_SG and lam sweeps at IPC 10 (the first job of each dataset also
builds its shared generator cache and full-data reference), then all the other jobs: the method
tables (MGD^3 "best" takes the sweep's best (t_sg, lam) by final top-1, a choice made on test
accuracy, which the report says) and the ablations. In each phase the datasets' jobs run side
by side.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(ROOT))

# -- the plan ------------------------------------------------------------------------------
DATASETS = ("digits", "fashion_mnist")
RUN_FIRST = ("fashion_mnist",)  # its jobs start first: the long ones (every train image scored,
# the full-data references) early, the other dataset's short ones beside them
IPCS = (1, 10, 50)
GENERATORS = {  # one shared generator per dataset: the shipped self-trained weights
    "digits": ["generator=dit_tiny"],
    # the shipped weights' settings (MODEL_CARD.md): trained at 16 px with a 20-minute budget
    "fashion_mnist": ["generator=unet_tiny", "generator.resolution=16", "generator.train.max_minutes=20"],
}
LATENT = {  # the latent generator's rows: its own VAE + a DiT on its latents, at the pixel one's size
    "digits": ["generator=ldm_tiny"],
    "fashion_mnist": ["generator=ldm_tiny", "generator.resolution=16"],
}
# The student schedule (conf/experiment/reference.yaml + these epochs), chosen on random real
# subsets before any method was compared: 500 / 200 / 100 epochs are about 500-800 SGD steps at
# each IPC (whether they converge: the convergence jobs and the report's schedule check).
EPOCHS = {1: 500, 10: 200, 50: 100}
# Soft-label students train SOFT_EPOCHS_FACTOR x as long: at 1 x, random real subsets were still
# climbing at the end (Fashion-MNIST IPC 10: 44 % halfway, 60 % at 200 epochs; 71 % at 400 and
# 77 % at 800), so the soft-label tables measured how fast a set is learnt, not how well. Chosen
# on random real subsets alone; the convergence jobs below check it in every run.
SOFT_EPOCHS_FACTOR = 4
CHECK_FACTOR = 2  # the convergence check: random real subsets trained CHECK_FACTOR x as long
FULL_EPOCHS = {"digits": 30, "fashion_mnist": 10}  # full-data students: ~600 / ~9400 steps
PROTOCOLS = {  # both protocols train the same ConvNet student; the teacher is a ConvNet too
    "hard_label": ["eval=hard_label"],
    "soft_label": [
        "eval=soft_label",
        "eval/student=convnet",
        "eval/student@eval.teacher.model=convnet",
        "eval.teacher.model.width=32",  # ConvNet-128 would cost ~5x the student per batch
        "eval.teacher.train.epochs=10",
        # HLR's hard-label students: the hard-label table's protocol (eval=hard_label defaults test
        # 100 times), so they are that table's students, read from the accuracy cache
        "+eval.hard_label.evals=2",
    ],
}
METHODS = {  # label -> overrides
    "random real": ["method=random"],
    "k-means real": ["method=kmeans_real"],
    "herding": ["method=herding"],
    "unguided": ["method=unguided"],
    "D4M": ["method=d4m"],
    "MGD^3 (paper defaults)": ["method=mgd3"],
    "patch selection (single)": ["method=patchsel", "method.tile_max_ipc=0"],
    "patch selection (2x2 tiles)": ["method=patchsel", "method.tile_max_ipc=1000"],
    "ManifoldGD": ["method=manifoldgd"],
}
GENERATED = (  # the methods that sample or score with the generator: they get latent rows
    "unguided",
    "D4M",
    "MGD^3 (paper defaults)",
    "MGD^3 (best t_SG, lam)",
    "patch selection (single)",
    "patch selection (2x2 tiles)",
    "ManifoldGD",
)
LATENT_SUFFIX = " [latent]"
SET_OF = "@set:"  # eval.distilled_dir=@set:<job>: that job's distilled/ folder (resolve_jobs)
T_SG = tuple(range(0, 55, 5))
LAMS = (0.01, 0.05, 0.1, 0.2, 0.5)
COMPONENTS = {  # MGD^3 Table 3
    "k-means real (mode discovery only)": ["method=kmeans_real", "method.space=latents"],
    "+ mode guidance (t_SG = 0)": ["method=mgd3", "method.t_sg=0"],
    "+ stop guidance (t_SG = 25)": ["method=mgd3", "method.t_sg=25"],
}
PATCHSEL_ABLATIONS = {
    "DIFT clustering, all images": ["method=patchsel", "method.tile_max_ipc=0"],
    "no clustering, all images": ["method=patchsel", "method.tile_max_ipc=0", "method.clustering=false"],
    "DIFT clustering, 50 images per class": [
        "method=patchsel",
        "method.tile_max_ipc=0",
        "method.images_per_class=50",
    ],
}
SMOKE = {
    "datasets": ("digits",),
    "ipcs": (2,),
    "methods": ("random real", "unguided"),
    "t_sg": (0, 50),
    "lams": (),
    "extra": ["debug=tiny"],
    "latent": (),
}


@dataclass
class Job:
    name: str  # folder under the runs directory, and the key of its results
    overrides: list[str]
    group: str = "table"  # table | tsg | lam | components | patchsel | convergence
    same_as: str | None = None  # another job's name: the same configuration, run once
    source: str | None = None  # the job whose distilled/ this one evaluates (set by resolve_jobs)
    config: str | None = None  # digest of its composed configuration (set by resolve_jobs)

    def folder(self, runs: Path) -> Path:
        return runs / self.name

    def finished(self, runs: Path) -> bool:
        """Done with these overrides and, once ``resolve_jobs`` has composed it, this composed
        configuration (a schedule changed in ``conf/experiment/reference.yaml`` leaves the
        overrides as they were): its metrics are written, or it stopped with a one-line error (a
        setting this dataset cannot take, such as more patches than images)."""
        folder = self.folder(runs)
        record = read_json(folder / "job.json")
        done = (folder / "metrics.json").is_file() or "error" in record
        recorded = record.get("overrides", [])
        same = without_set(recorded) == without_set(self.overrides)
        if self.source:  # the set's folder may have moved with the runs folder (a fresh clone)
            same = same and any(o.endswith(f"/{self.source}/distilled") for o in recorded)
        if self.config:
            same = same and record.get("config") == self.config
        return done and same


def without_set(overrides: list[str]) -> list[str]:
    return [o for o in overrides if not o.startswith("eval.distilled_dir=")]


def slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label.lower()).strip("_")


def epochs(protocol: str, ipc: int) -> int:
    """The students' epochs of a table cell (``EPOCHS``, x ``SOFT_EPOCHS_FACTOR`` for soft labels)."""
    return EPOCHS[ipc] * (SOFT_EPOCHS_FACTOR if protocol == "soft_label" else 1)


def base(
    dataset: str, protocol: str, ipc: int, plan: dict, latent: bool = False, longer: int = 1
) -> list[str]:
    """A job's shared overrides; ``longer``: its students train that many times the epochs."""
    generator = (LATENT if latent else GENERATORS)[dataset]
    schedule = []
    if not plan["smoke"]:
        schedule = [
            f"eval.epochs={epochs(protocol, ipc) * longer}",
            f"eval.reference.full_epochs={FULL_EPOCHS[dataset]}",
        ]
        if protocol == "soft_label":  # HLR's hard-label students: the hard-label table's
            schedule.append(f"+eval.hard_label.epochs={EPOCHS[ipc]}")
    return [
        f"dataset={dataset}",
        "experiment=reference",
        *generator,
        *PROTOCOLS[protocol],
        f"ipc={ipc}",
        *schedule,
        *plan["extra"],
    ]


def sweep_jobs(dataset: str, plan: dict) -> list[Job]:
    common = base(dataset, "hard_label", plan["sweep_ipc"], plan) + ["method=mgd3"]
    jobs = [Job(f"{dataset}/sweep/tsg{t}", common + [f"method.t_sg={t}"], "tsg") for t in plan["t_sg"]]
    return jobs + [
        Job(f"{dataset}/sweep/lam{lam}", common + [f"method.lam={lam}"], "lam") for lam in plan["lams"]
    ]


def table_name(dataset: str, protocol: str, ipc: int, label: str) -> str:
    return f"{dataset}/{protocol}/ipc{ipc}/{slug(label)}"


def table_jobs(dataset: str, plan: dict, best: list[str] | None) -> list[Job]:
    """Hard-label jobs distil and evaluate; each soft-label job evaluates the same set, read
    back from its hard-label job's folder (``task=evaluate``), so every set is distilled once."""
    rows = {m: METHODS[m] for m in plan["methods"]}
    if best is not None:
        rows["MGD^3 (best t_SG, lam)"] = ["method=mgd3", *best]
    variants = [(label, overrides, False) for label, overrides in rows.items()]
    variants += [(label + LATENT_SUFFIX, rows[label], True) for label in GENERATED if label in rows]
    jobs = []
    for generator in (False, True):  # the latent generator's rows last
        hard, soft = [], []
        for ipc in plan["ipcs"]:
            for label, overrides, latent in variants:
                if latent != generator or (latent and ipc not in plan["latent"]):
                    continue
                name = table_name(dataset, "hard_label", ipc, label)
                hard.append(Job(name, base(dataset, "hard_label", ipc, plan, latent) + overrides))
                soft.append(
                    Job(
                        table_name(dataset, "soft_label", ipc, label),
                        base(dataset, "soft_label", ipc, plan, latent)
                        + overrides
                        + ["task=evaluate", f"eval.distilled_dir={SET_OF}{name}"],
                    )
                )
        jobs += hard + soft
    return jobs


def ablation_jobs(dataset: str, plan: dict) -> list[Job]:
    ipc = plan["sweep_ipc"]
    jobs = [
        Job(f"{dataset}/components/{slug(k)}", base(dataset, "hard_label", ipc, plan) + v, "components")
        for k, v in COMPONENTS.items()
    ]
    same = {"DIFT clustering, all images": table_name(dataset, "soft_label", ipc, "patch selection (single)")}
    return jobs + [
        Job(
            f"{dataset}/patchsel/{slug(k)}",
            base(dataset, "soft_label", ipc, plan) + v,
            "patchsel",
            same_as=same.get(k) if ipc in plan["ipcs"] else None,
        )
        for k, v in PATCHSEL_ABLATIONS.items()
    ]


def convergence_jobs(dataset: str, plan: dict) -> list[Job]:
    """The schedule check: each table's random real set evaluated again with students trained
    ``CHECK_FACTOR`` x as long (no references: only the students' accuracy is compared). The
    schedule has converged where the longer students' final top-1 is within 1 point of the table's."""
    jobs = []
    for protocol in PROTOCOLS:
        for ipc in plan["ipcs"]:
            real = table_name(dataset, "hard_label", ipc, "random real")
            overrides = base(dataset, protocol, ipc, plan, longer=CHECK_FACTOR) + METHODS["random real"]
            overrides += [
                "eval.reference.enabled=false",
                "task=evaluate",
                f"eval.distilled_dir={SET_OF}{real}",
            ]
            jobs.append(Job(convergence_name(dataset, protocol, ipc), overrides, "convergence"))
    return jobs


def convergence_name(dataset: str, protocol: str, ipc: int) -> str:
    return f"{dataset}/convergence/{protocol}/ipc{ipc}"


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
    from ddapp.tasks import build, close_loggers, quiet_lightning
    from ddcore.errors import UserError

    folder = job.folder(runs)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = compose(job.overrides, folder)
    check_config(cfg)
    quiet_lightning()
    start = time.perf_counter()
    record = {"overrides": job.overrides, "config": job.config}
    try:
        metrics = build(cfg.task)(cfg)
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
    if "method=patchsel" in job.overrides:
        groups.append(("method=patchsel", *pick("dataset=", "generator=")))
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


def best_setting(runs: Path, dataset: str, t_sgs, lams, aliases: dict[str, str]) -> list[str]:
    """(t_sg, lam) with the highest mean final top-1 in the two sweeps (lam sweep at t_sg 25)."""
    candidates = [(f"sweep/tsg{t}", [f"method.t_sg={t}"]) for t in t_sgs]
    candidates += [(f"sweep/lam{lam}", [f"method.lam={lam}"]) for lam in lams]
    scored = []
    for name, overrides in candidates:
        name = f"{dataset}/{name}"
        metrics = read_metrics(runs / aliases.get(name, name))
        if metrics:
            scored.append((metrics["student/final_acc_mean"], overrides))
    return max(scored, key=lambda s: s[0])[1] if scored else ["method.t_sg=25"]


def read_metrics(folder: Path) -> dict | None:
    return read_json(folder / "metrics.json") or None


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def run_order(datasets: list[str]) -> list[str]:
    """The datasets in the order their jobs are offered to the workers (``RUN_FIRST`` first)."""
    return sorted(datasets, key=lambda d: d not in RUN_FIRST)


def other_jobs(dataset: str, plan: dict, best: list[str]) -> list[Job]:
    """The jobs after the sweeps: the tables, then the ablations; patch selection last (its
    first job scores every train image, about 23 min for Fashion-MNIST on one thread, and
    ``first_to_start`` starts it first anyway), the latent rows after the pixel ones."""
    jobs = table_jobs(dataset, plan, best) + (ablation_jobs(dataset, plan) if plan["ablations"] else [])
    jobs += convergence_jobs(dataset, plan) if plan["convergence"] else []
    jobs.sort(key=lambda j: ("method=patchsel" in j.overrides, LATENT[dataset][0] in j.overrides))
    return jobs


def plan(smoke: bool, extended: bool = False) -> dict:
    """The jobs' settings: ``latent`` is the IPCs that get the latent generator's rows (issue
    17's pixel-vs-latent comparison), only with ``extended``: at IPC 10 alone they are 0.46 h of
    job time, and with them the plan's job time (3.97 h measured) cannot fit 2 h on two workers."""
    if smoke:
        return {
            "datasets": SMOKE["datasets"],
            "ipcs": SMOKE["ipcs"],
            "methods": SMOKE["methods"],
            "t_sg": SMOKE["t_sg"],
            "lams": SMOKE["lams"],
            "extra": SMOKE["extra"],
            "latent": SMOKE["latent"],
            "ablations": False,
            "convergence": False,
            "sweep_ipc": 2,
            "smoke": True,
        }
    return {
        "datasets": DATASETS,
        "ipcs": IPCS,
        "methods": tuple(METHODS),
        "t_sg": T_SG,
        "lams": LAMS,
        "extra": [],
        "latent": IPCS if extended else (),
        "ablations": True,
        "convergence": True,
        "sweep_ipc": 10,
        "smoke": False,
    }


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
    aliases, seen, by_name, warm = read_json(aliases_file), {}, {}, set()
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
        jobs = other_jobs(dataset, p, best_setting(runs, dataset, p["t_sg"], p["lams"], aliases))
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

    stale = [n for n, j in by_name.items() if read_metrics(j.folder(runs)) and not j.finished(runs)]
    path = write_report(runs, out, p, aliases, planned, stale)
    print(f"report: {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

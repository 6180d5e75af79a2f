"""The reference experiment: the papers' comparisons on real data, as the project's own tables.

    python experiments/reference.py            # `make reference`: every job, then the report
    python experiments/reference.py --smoke    # `make reference-smoke`: a tiny subset, same path
    python experiments/reference.py --report   # rebuild results/reference.md from finished jobs

Every job is one ``run.py`` configuration: ``experiment=reference`` (the shared student
schedule, chosen before any method was compared) plus the job's own overrides. Jobs run in this
process through Hydra's compose API, one after another, so the framework is imported once.
A job is finished when its folder holds ``metrics.json`` and a ``job.json`` with the same
overrides; a rerun skips finished jobs and resumes a half-distilled one class by class.

Phases: the shared generator and teacher per dataset (cached), the t_SG and lam sweeps at
IPC 10, then the method tables (MGD^3 "best" takes the sweep's best (t_sg, lam) by final top-1,
a choice made on test accuracy, which the report says), then the ablations.
"""

from __future__ import annotations

import argparse
import json
import os
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
IPCS = (1, 10, 50)
PROTOCOLS = {  # both protocols train the same ConvNet student; the teacher is a ConvNet too
    "hard_label": ["eval=hard_label"],
    "soft_label": [
        "eval=soft_label",
        "eval/student=convnet",
        "eval/student@eval.teacher.model=convnet",
        "eval.teacher.train.epochs=10",
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
}


@dataclass
class Job:
    name: str  # folder under the runs directory, and the key of its results
    overrides: list[str]
    group: str = "table"  # table | tsg | lam | components | patchsel | setup

    def folder(self, runs: Path) -> Path:
        return runs / self.name

    def finished(self, runs: Path) -> bool:
        folder = self.folder(runs)
        try:
            return (folder / "metrics.json").is_file() and json.loads((folder / "job.json").read_text())[
                "overrides"
            ] == self.overrides
        except (OSError, ValueError, KeyError):
            return False


def slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label.lower()).strip("_")


def base(dataset: str, protocol: str, ipc: int, extra: list[str]) -> list[str]:
    return [f"dataset={dataset}", "experiment=reference", *PROTOCOLS[protocol], f"ipc={ipc}", *extra]


def sweep_jobs(dataset: str, ipc: int, t_sgs, lams, extra) -> list[Job]:
    common = base(dataset, "hard_label", ipc, extra) + ["method=mgd3"]
    jobs = [Job(f"{dataset}/sweep/tsg{t}", common + [f"method.t_sg={t}"], "tsg") for t in t_sgs]
    return jobs + [Job(f"{dataset}/sweep/lam{lam}", common + [f"method.lam={lam}"], "lam") for lam in lams]


def table_jobs(dataset: str, ipcs, methods, extra, best: list[str] | None) -> list[Job]:
    jobs = []
    for protocol in PROTOCOLS:
        for ipc in ipcs:
            rows = {m: METHODS[m] for m in methods}
            if best is not None:
                rows["MGD^3 (best t_SG, lam)"] = ["method=mgd3", *best]
            for label, overrides in rows.items():
                jobs.append(
                    Job(
                        f"{dataset}/{protocol}/ipc{ipc}/{slug(label)}",
                        base(dataset, protocol, ipc, extra) + overrides,
                    )
                )
    return jobs


def ablation_jobs(dataset: str, extra) -> list[Job]:
    jobs = [
        Job(f"{dataset}/components/{slug(k)}", base(dataset, "hard_label", 10, extra) + v, "components")
        for k, v in COMPONENTS.items()
    ]
    return jobs + [
        Job(f"{dataset}/patchsel/{slug(k)}", base(dataset, "soft_label", 10, extra) + v, "patchsel")
        for k, v in PATCHSEL_ABLATIONS.items()
    ]


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


def run_job(job: Job, runs: Path) -> dict:
    """What ``python run.py <overrides>`` does, in this process."""
    from ddapp.config_checks import check_config
    from ddapp.tasks import build, close_loggers, quiet_lightning

    folder = job.folder(runs)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = compose(job.overrides, folder)
    check_config(cfg)
    quiet_lightning()
    start = time.perf_counter()
    try:
        metrics = build(cfg.task)(cfg)
    finally:
        close_loggers()
    record = {"overrides": job.overrides, "seconds": round(time.perf_counter() - start, 1)}
    (folder / "job.json").write_text(json.dumps(record, indent=1))
    return metrics


def run_all(jobs: list[Job], runs: Path, done_before: int, total: int) -> None:
    """Run the unfinished jobs, printing progress with the rate and ETA of this phase."""
    todo = [j for j in jobs if not j.finished(runs)]
    started = time.perf_counter()
    for i, job in enumerate(todo):
        position = done_before + (len(jobs) - len(todo)) + i + 1
        print(f"[{position}/{total}] {job.name}", flush=True)
        t0 = time.perf_counter()
        run_job(job, runs)
        rate = (i + 1) / (time.perf_counter() - started)
        print(
            f"  done in {time.perf_counter() - t0:.0f} s; {rate * 3600:.0f} jobs/h, "
            f"ETA for this phase {(len(todo) - i - 1) / rate / 60:.1f} min",
            flush=True,
        )


def best_setting(runs: Path, dataset: str, t_sgs, lams) -> list[str]:
    """(t_sg, lam) with the highest mean final top-1 in the two sweeps (lam sweep at t_sg 25)."""
    candidates = [(f"sweep/tsg{t}", [f"method.t_sg={t}"]) for t in t_sgs]
    candidates += [(f"sweep/lam{lam}", [f"method.lam={lam}"]) for lam in lams]
    scored = []
    for name, overrides in candidates:
        metrics = read_metrics(runs / dataset / name)
        if metrics:
            scored.append((metrics["student/final_acc_mean"], overrides))
    return max(scored, key=lambda s: s[0])[1] if scored else ["method.t_sg=25"]


def read_metrics(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return None


def plan(smoke: bool) -> dict:
    if smoke:
        return {
            "datasets": SMOKE["datasets"],
            "ipcs": SMOKE["ipcs"],
            "methods": SMOKE["methods"],
            "t_sg": SMOKE["t_sg"],
            "lams": SMOKE["lams"],
            "extra": SMOKE["extra"],
            "ablations": False,
            "sweep_ipc": 2,
        }
    return {
        "datasets": DATASETS,
        "ipcs": IPCS,
        "methods": tuple(METHODS),
        "t_sg": T_SG,
        "lams": LAMS,
        "extra": [],
        "ablations": True,
        "sweep_ipc": 10,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny subset (CI)")
    parser.add_argument("--report", action="store_true", help="only rebuild the report")
    parser.add_argument("--runs", type=Path, default=None, help="job folders (logs/reference)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (results)")
    args = parser.parse_args(argv)
    p = plan(args.smoke)
    runs = args.runs or ROOT / "logs" / ("reference-smoke" if args.smoke else "reference")
    out = args.out or (runs / "results" if args.smoke else ROOT / "results")
    import ddcore  # noqa: F401  (torchvision import fix)
    from ddapp.schemas import register

    register()
    if not args.report:
        for dataset in p["datasets"]:
            sweeps = sweep_jobs(dataset, p["sweep_ipc"], p["t_sg"], p["lams"], p["extra"])
            run_all(sweeps, runs, 0, len(sweeps))
            best = best_setting(runs, dataset, p["t_sg"], p["lams"])
            rest = table_jobs(dataset, p["ipcs"], p["methods"], p["extra"], best)
            rest += ablation_jobs(dataset, p["extra"]) if p["ablations"] else []
            run_all(rest, runs, len(sweeps), len(sweeps) + len(rest))
    from experiments.reference_report import write_report

    path = write_report(runs, out, p)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

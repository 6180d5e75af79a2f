"""The reference experiment's plan, as data: which ``run.py`` jobs it runs and how they pair.

Every job is one ``run.py`` configuration: ``experiment=reference`` (the shared student schedule,
chosen before any method was compared) plus the job's own overrides. ``experiments/reference.py``
runs them; ``experiments/reference_report.py`` reads their records. Neither is imported here.

Seeds. Every table set is distilled once per seed in ``SET_SEEDS`` and evaluated by one student
whose seed derives from the same run seed, so seed s's student is the same for every method:
a cell is mean +- std over the seeds, and two rows are compared seed by seed (paired).
Selection. MGD^3's (t_SG, lam) sweeps run on a validation split held out from the train split
(``score_on=validation``); the setting they choose is then reported on the test split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DATASETS = ("digits", "fashion_mnist")
RUN_FIRST = ("fashion_mnist",)  # its jobs start first: the long ones (every train image scored,
# the full-data references) early, the other dataset's short ones beside them
IPCS = (1, 10, 50)
# IPC 50 on digits would be 37 % of its ~135 train images per class: not a distilled set
DATASET_IPCS = {"digits": (1, 10)}
GENERATORS = {  # one shared generator per dataset: the shipped self-trained weights
    "digits": ["generator=dit_tiny"],
    # the shipped weights' settings (MODEL_CARD.md): trained at 16 px with a 20-minute budget
    "fashion_mnist": ["generator=unet_tiny", "generator.resolution=16", "generator.train.max_minutes=20"],
}
LATENT = {  # the latent generator's rows: its own VAE + a DiT on its latents, at the pixel one's size
    "digits": ["generator=ldm_tiny"],
    "fashion_mnist": ["generator=ldm_tiny", "generator.resolution=16"],
}
SET_SEEDS = (0, 1, 2)  # each table set distilled with each seed, one student per set
SELECTION_SEED = 0  # the sweeps: one set, evaluated by the schedule's 3 students
# Validation splits held out of the train split for the sweeps: about 270 digits (one image is
# 0.37 points) and 6,000 Fashion-MNIST images.
VALIDATION = {"digits": 0.2, "fashion_mnist": 0.1}
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


@dataclass(frozen=True)
class Row:
    """A method's row: its overrides, and the tables it appears in; the set is distilled under
    the first protocol and read back (``task=evaluate``) by the others."""

    overrides: tuple[str, ...]
    protocols: tuple[str, ...] = ("hard_label", "soft_label")


METHODS = {  # label -> row
    "random real": Row(("method=random",)),
    # the real-subset baselines beyond random real only in the hard-label tables (the 2-hour budget)
    "k-means real": Row(("method=kmeans_real",), ("hard_label",)),
    "herding": Row(("method=herding",), ("hard_label",)),
    "unguided": Row(("method=unguided",)),
    "D4M": Row(("method=d4m",)),
    "MGD^3 (paper defaults)": Row(("method=mgd3",)),
    "patch selection (single)": Row(("method=patchsel", "method.tile_max_ipc=0")),
    "patch selection (2x2 tiles)": Row(("method=patchsel", "method.tile_max_ipc=1000")),
    "ManifoldGD": Row(("method=manifoldgd",)),
    # the seed papers' own baselines: Minimax in MGD^3's hard-label table, RDED beside patch
    # selection in its soft-label one
    "Minimax": Row(("method=minimax",), ("hard_label",)),  # the official fine-tune: 1,347 / 12,000 steps
    "RDED": Row(("method=rded",), ("soft_label",)),
}
BEST = "MGD^3 (best t_SG, lam)"  # the row at the sweeps' choice, made on the validation split
GENERATED = (  # the methods that sample or score with the generator: they get latent rows
    "unguided",
    "D4M",
    "MGD^3 (paper defaults)",
    BEST,
    "patch selection (single)",
    "patch selection (2x2 tiles)",
    "ManifoldGD",
)
LATENT_SUFFIX = " [latent]"
SET_OF = "@set:"  # eval.distilled_dir=@set:<job>: that job's distilled/ folder (resolve_jobs)
T_SG = (0, 10, 20, 25, 30, 40, 50)  # every 10 steps, and the paper's 25
# MGD^3 samples 50 steps (conf/method/mgd3.yaml): at t_SG = 50 guidance never applies and the
# set is unguided's, so that sweep point runs as method=unguided and is shown as such.
GUIDANCE_OFF = 50
LAMS = (0.01, 0.05, 0.1, 0.2, 0.5)
PAPER_SETTING = ["method.t_sg=25"]  # conf/method/mgd3.yaml's t_SG 25, lam 0.1
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
    "seeds": (0, 1),
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


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label.lower()).strip("_")


def ipcs_of(plan: dict, dataset: str) -> tuple[int, ...]:
    """The IPCs of a dataset's tables (``DATASET_IPCS``, else the plan's)."""
    return tuple(i for i in plan["ipcs"] if i in plan.get("dataset_ipcs", {}).get(dataset, plan["ipcs"]))


def epochs(protocol: str, ipc: int) -> int:
    """The students' epochs of a table cell (``EPOCHS``, x ``SOFT_EPOCHS_FACTOR`` for soft labels)."""
    return EPOCHS[ipc] * (SOFT_EPOCHS_FACTOR if protocol == "soft_label" else 1)


def base(
    dataset: str,
    protocol: str,
    ipc: int,
    plan: dict,
    seed: int | None = None,
    latent: bool = False,
    longer: int = 1,
) -> list[str]:
    """A job's shared overrides. ``seed``: a table job's set seed, with one student (None: a
    sweep job on the validation split, with the schedule's 3 students); ``longer``: its students
    train that many times the epochs."""
    generator = (LATENT if latent else GENERATORS)[dataset]
    schedule = []
    if not plan["smoke"]:
        schedule = [
            f"eval.epochs={epochs(protocol, ipc) * longer}",
            f"eval.reference.full_epochs={FULL_EPOCHS[dataset]}",
        ]
        if protocol == "soft_label":  # HLR's hard-label students: the hard-label table's
            schedule.append(f"+eval.hard_label.epochs={EPOCHS[ipc]}")
    if seed is None:  # choosing settings: off the test split, no references needed
        fraction = VALIDATION.get(dataset, 0.2)
        seeds = [f"seed={SELECTION_SEED}", "score_on=validation", f"validation.fraction={fraction}"]
        seeds.append("eval.reference.enabled=false")
    else:
        seeds = [f"seed={seed}", "eval.repeats=1"]
    return [
        f"dataset={dataset}",
        "experiment=reference",
        *generator,
        *PROTOCOLS[protocol],
        f"ipc={ipc}",
        *schedule,
        *seeds,
        *plan["extra"],
    ]


def seed_name(name: str, seed: int) -> str:
    return f"{name}/seed{seed}"


def sweep_name(dataset: str, point: str) -> str:
    return f"{dataset}/sweep/{point}"


def sweep_jobs(dataset: str, plan: dict) -> list[Job]:
    """The (t_SG, lam) sweeps on the validation split; t_SG = GUIDANCE_OFF runs as unguided."""
    common = base(dataset, "hard_label", plan["sweep_ipc"], plan)
    jobs = [
        Job(
            sweep_name(dataset, f"tsg{t}"),
            common + (["method=unguided"] if t == GUIDANCE_OFF else ["method=mgd3", f"method.t_sg={t}"]),
            "tsg",
        )
        for t in plan["t_sg"]
    ]
    return jobs + [
        Job(sweep_name(dataset, f"lam{lam}"), common + ["method=mgd3", f"method.lam={lam}"], "lam")
        for lam in plan["lams"]
    ]


def table_name(dataset: str, protocol: str, ipc: int, label: str) -> str:
    """A table cell's folder; its jobs are ``seed_name(cell, s)``."""
    return f"{dataset}/{protocol}/ipc{ipc}/{slug(label)}"


def rows(plan: dict, best: list[str] | None) -> dict[str, Row]:
    chosen = {m: METHODS[m] for m in plan["methods"]}
    if best is not None:
        overrides = ("method=unguided",) if f"method.t_sg={GUIDANCE_OFF}" in best else ("method=mgd3", *best)
        chosen[BEST] = Row(overrides)
    return chosen


def table_jobs(dataset: str, plan: dict, best: list[str] | None) -> list[Job]:
    """Per row, IPC and set seed: the job of the row's first protocol distils and evaluates;
    the others evaluate that set, read back from its folder (``task=evaluate``)."""
    chosen = rows(plan, best)
    variants = [(label, row, False) for label, row in chosen.items()]
    variants += [(label + LATENT_SUFFIX, chosen[label], True) for label in GENERATED if label in chosen]
    jobs = []
    for generator in (False, True):  # the latent generator's rows last
        first, later = [], []
        for ipc in ipcs_of(plan, dataset):
            for label, row, latent in variants:
                if latent != generator or (latent and ipc not in plan["latent"]):
                    continue
                for seed in plan["seeds"]:
                    own, *others = row.protocols
                    name = seed_name(table_name(dataset, own, ipc, label), seed)
                    overrides = list(row.overrides)
                    first.append(Job(name, base(dataset, own, ipc, plan, seed, latent) + overrides))
                    later += [
                        Job(
                            seed_name(table_name(dataset, protocol, ipc, label), seed),
                            base(dataset, protocol, ipc, plan, seed, latent)
                            + overrides
                            + ["task=evaluate", f"eval.distilled_dir={SET_OF}{name}"],
                        )
                        for protocol in others
                    ]
        jobs += first + later
    return jobs


def ablation_jobs(dataset: str, plan: dict) -> list[Job]:
    ipc = plan["sweep_ipc"]
    jobs = [
        Job(
            seed_name(f"{dataset}/components/{slug(k)}", s),
            base(dataset, "hard_label", ipc, plan, s) + v,
            "components",
        )
        for k, v in COMPONENTS.items()
        for s in plan["seeds"]
    ]
    same = {"DIFT clustering, all images": table_name(dataset, "soft_label", ipc, "patch selection (single)")}
    return jobs + [
        Job(
            seed_name(f"{dataset}/patchsel/{slug(k)}", s),
            base(dataset, "soft_label", ipc, plan, s) + v,
            "patchsel",
            same_as=seed_name(same[k], s) if k in same and ipc in ipcs_of(plan, dataset) else None,
        )
        for k, v in PATCHSEL_ABLATIONS.items()
        for s in plan["seeds"]
    ]


def convergence_jobs(dataset: str, plan: dict) -> list[Job]:
    """The schedule check: each table's random real set of the first seed evaluated again with
    students trained ``CHECK_FACTOR`` x as long (no references: only the students' accuracy is compared). The
    schedule has converged where the longer students' final top-1 is within 1 point of the table's."""
    jobs = []
    for protocol in PROTOCOLS:
        for ipc in ipcs_of(plan, dataset):
            for s in plan["seeds"][:1]:  # one seed: the 2-hour budget
                real = seed_name(table_name(dataset, "hard_label", ipc, "random real"), s)
                overrides = base(dataset, protocol, ipc, plan, s, longer=CHECK_FACTOR)
                overrides += [
                    *METHODS["random real"].overrides,
                    "eval.reference.enabled=false",
                    "task=evaluate",
                    f"eval.distilled_dir={SET_OF}{real}",
                ]
                jobs.append(
                    Job(seed_name(convergence_name(dataset, protocol, ipc), s), overrides, "convergence")
                )
    return jobs


def convergence_name(dataset: str, protocol: str, ipc: int) -> str:
    return f"{dataset}/convergence/{protocol}/ipc{ipc}"


def best_setting(metrics_of, dataset: str, t_sgs, lams) -> tuple[str, list[str]] | None:
    """The sweep point with the highest mean final top-1 on the validation split, of the t_SG
    sweep and the lam sweep (at t_SG 25): its name and overrides; None before any finished.
    ``metrics_of(job name)``: that job's metrics, or None."""
    points = [(f"tsg{t}", [f"method.t_sg={t}"]) for t in t_sgs]
    points += [(f"lam{lam}", [f"method.lam={lam}"]) for lam in lams]
    scored = []
    for point, overrides in points:
        metrics = metrics_of(sweep_name(dataset, point)) or {}
        if metrics.get("student/final_acc_mean") is not None:
            scored.append((metrics["student/final_acc_mean"], point, overrides))
    if not scored:
        return None
    _, point, overrides = max(scored, key=lambda s: s[0])  # the first of equals
    return point, overrides


def run_order(datasets: list[str]) -> list[str]:
    """The datasets in the order their jobs are offered to the workers (``RUN_FIRST`` first)."""
    return sorted(datasets, key=lambda d: d not in RUN_FIRST)


def other_jobs(dataset: str, plan: dict, best: list[str]) -> list[Job]:
    """The jobs after the sweeps: the tables, then the ablations; patch selection last (its
    first job scores every train image, about 23 min for Fashion-MNIST on one thread, and the
    scheduler starts it first anyway), the latent rows after the pixel ones."""
    jobs = table_jobs(dataset, plan, best) + (ablation_jobs(dataset, plan) if plan["ablations"] else [])
    jobs += convergence_jobs(dataset, plan) if plan["convergence"] else []
    jobs.sort(key=lambda j: ("method=patchsel" in j.overrides, LATENT[dataset][0] in j.overrides))
    return jobs


def plan(smoke: bool, extended: bool = False) -> dict:
    """The jobs' settings: ``latent`` is the IPCs that get the latent generator's rows (the
    pixel-vs-latent comparison), only with ``extended``: they do not fit the 2-hour budget."""
    if smoke:
        return {**SMOKE, "ablations": False, "convergence": False, "sweep_ipc": 2, "smoke": True}
    return {
        "datasets": DATASETS,
        "ipcs": IPCS,
        "dataset_ipcs": DATASET_IPCS,
        "methods": tuple(METHODS),
        "seeds": SET_SEEDS,
        "t_sg": T_SG,
        "lams": LAMS,
        "extra": [],
        "latent": IPCS if extended else (),
        "ablations": True,
        "convergence": True,
        "sweep_ipc": 10,
        "smoke": False,
    }

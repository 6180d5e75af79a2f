"""Table of a sweep: one row per config of a Hydra multirun folder, mean ± std over its jobs.

    python experiments/summarize.py logs/multiruns/<time>                 # Markdown to stdout
    python experiments/summarize.py <dir> --csv table.csv                 # also write CSV
    python experiments/summarize.py <dir> --curves tsg_lam.png            # accuracy vs t_SG (Fig. 4a)
    python experiments/summarize.py <dir> --baseline method=unguided      # paired by seed, 95% CI

A job is a folder with a ``metrics.json``. Its config is what its ``.hydra/overrides.yaml`` says
(else the folder name, which Hydra builds from the overrides). Jobs that differ only by ``seed``
(or logger/path settings) are one config: accuracies are pooled over all their students (seeds x
repeats), other metrics averaged over jobs. The config column shows the overrides that vary.
For the curves, t_sg and lam come from the overrides or from ``distilled/manifest.json``.
``--baseline key=value``: each config's accuracy minus the baseline's, paired by seed, with a Student
t interval and a verdict (docs/statistics.md: which jobs pair, and why the job is the sample).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from experiments.paired import t_interval  # noqa: E402

# overrides that do not change what a job computes, or that a row averages over
NOT_CONFIG = ("seed", "logger", "paths.", "hydra.", "dataset.root", "eval.distilled_dir")

# (metrics.json key, column title, scale for display, digits); accuracies pool "<key>_runs"
METRICS = [
    ("student/final_acc", "final top-1", 100, 1),
    ("student/best_acc", "best top-1", 100, 1),
    ("set/diversity_mean", "diversity", 1, 2),
    ("set/representativeness_mean", "representativeness", 1, 2),
    ("distill/seconds", "distill s", 1, 1),
    ("student/seconds", "eval s", 1, 1),
]


@dataclass
class Job:
    folder: Path
    overrides: dict[str, str]
    metrics: dict
    manifest_config: dict = field(default_factory=dict)

    @property
    def identity(self) -> tuple:
        return tuple(sorted((k, v) for k, v in self.overrides.items() if not ignored(k)))

    def setting(self, key: str):
        """A config value: the override if there is one, else the manifest's resolved config."""
        if key in self.overrides:
            return parse_value(self.overrides[key])
        node = self.manifest_config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node


def ignored(key: str) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in NOT_CONFIG)


def parse_value(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key.lstrip("+~")] = value
    return out


def read_job(folder: Path) -> Job:
    overrides_file = folder / ".hydra" / "overrides.yaml"
    if overrides_file.is_file():
        overrides = parse_overrides(yaml.safe_load(overrides_file.read_text()) or [])
    else:  # Hydra's override_dirname: "a=1,b=2"
        overrides = parse_overrides([p for p in folder.name.split(",") if "=" in p])
    manifest_file = folder / "distilled" / "manifest.json"
    manifest = json.loads(manifest_file.read_text()) if manifest_file.is_file() else {}
    return Job(
        folder, overrides, json.loads((folder / "metrics.json").read_text()), manifest.get("config", {})
    )


def collect(sweep_dir: Path) -> list[Job]:
    files = (
        [sweep_dir / "metrics.json"]
        if (sweep_dir / "metrics.json").is_file()
        else sorted(sweep_dir.rglob("metrics.json"))
    )  # nested too: sweeps made before jobs were one level
    return [read_job(f.parent) for f in files]


# -- rows ----------------------------------------------------------------------------------------
def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def metric_values(jobs: list[Job], key: str) -> list[float]:
    """Per-student values pooled over jobs when the jobs list them, else one value per job."""
    values = []
    for job in jobs:
        runs = job.metrics.get(f"{key}_runs")
        single = job.metrics.get(f"{key}_mean", job.metrics.get(key))
        if isinstance(runs, list) and runs:
            values += [float(v) for v in runs]
        elif isinstance(single, (int, float)) and not isinstance(single, bool):
            values.append(float(single))
    return values


def sort_key(identity: tuple) -> tuple:
    """Numbers in numeric order (t_sg=5 before t_sg=10)."""
    out = []
    for key, value in identity:
        parsed = parse_value(value)
        out.append((key, 0, parsed, "") if isinstance(parsed, (int, float)) else (key, 1, 0, value))
    return tuple(out)


def group_jobs(jobs: list[Job]) -> list[dict]:
    """One row per config: label, jobs, seeds, and (mean, std, n) per metric."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.identity, []).append(job)
    varying = {k for ident in groups for k, v in ident if any(dict(other).get(k) != v for other in groups)}
    rows = []
    for identity in sorted(groups, key=sort_key):
        members = groups[identity]
        label = ",".join(f"{k}={v}" for k, v in identity if k in varying) or (
            ",".join(f"{k}={v}" for k, v in identity) or "all"
        )
        row = {
            "config": label,
            "jobs": len(members),
            "members": members,
            "method": unique(j.metrics.get("method") for j in members),
            "ipc": unique(j.metrics.get("ipc") for j in members),
            "seeds": unique(j.metrics.get("seed") for j in members),
        }
        for key, *_ in METRICS:
            values = metric_values(members, key)
            row[key] = (*mean_std(values), len(values)) if values else None
        rows.append(row)
    return rows


def unique(values) -> str:
    seen = []
    for value in values:
        if value is not None and value not in seen:
            seen.append(value)
    return "/".join(map(str, seen))


# -- output --------------------------------------------------------------------------------------
def cell(stat, scale: float, digits: int) -> str:
    if stat is None:
        return ""
    mean, std, n = stat
    text = f"{scale * mean:.{digits}f}"
    return text + (f" ± {scale * std:.{digits}f}" if n > 1 else "")


def shown_metrics(rows: list[dict]) -> list[tuple]:
    return [m for m in METRICS if any(row[m[0]] is not None for row in rows)]


def markdown(rows: list[dict]) -> str:
    metrics = shown_metrics(rows)
    header = ["config", "method", "ipc", "jobs"] + [title for _, title, *_ in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["config"], row["method"], str(row["ipc"]), str(row["jobs"])]
        cells += [cell(row[key], scale, digits) for key, _, scale, digits in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path) -> None:
    """Raw numbers (accuracies as fractions): <metric>_mean, <metric>_std, <metric>_n."""
    metrics = [key for key, *_ in shown_metrics(rows)]
    base = {key: key.removesuffix("_mean") for key in metrics}  # set/diversity_mean -> set/diversity
    fields = ["config", "method", "ipc", "jobs", "seeds"]
    fields += [f"{base[key]}_{part}" for key in metrics for part in ("mean", "std", "n")]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            out = {k: row[k] for k in fields[:5]}
            for key in metrics:
                stat = row[key] or ("", "", 0)
                out.update(zip((f"{base[key]}_mean", f"{base[key]}_std", f"{base[key]}_n"), stat))
            writer.writerow(out)


def save_curves(rows: list[dict], path: Path, metric: str = "student/final_acc") -> Path:
    """Accuracy vs method.t_sg, one line per method.lam (MGD^3 Fig. 4a); configs without t_sg
    (random, unguided) as dashed horizontal references."""
    from matplotlib.figure import Figure

    from ddapp.figures import save_figure

    lines: dict = {}
    references = []
    for row in rows:
        if row[metric] is None:
            continue
        job = row["members"][0]
        t_sg, lam = job.setting("method.t_sg"), job.setting("method.lam")
        if t_sg is None:
            references.append((row["config"], row[metric]))
        else:
            lines.setdefault(lam, []).append((float(t_sg), *row[metric][:2]))
    if not lines:
        raise ValueError("no job has a method.t_sg (is this an MGD^3 sweep?)")
    fig = Figure(figsize=(6.4, 4.4), dpi=100)
    ax = fig.subplots()
    for lam in sorted(lines, key=lambda v: (v is None, v)):
        points = sorted(lines[lam])
        x = [p[0] for p in points]
        ax.errorbar(
            x,
            [100 * p[1] for p in points],
            yerr=[100 * p[2] for p in points],
            marker="o",
            capsize=3,
            label=f"λ = {lam}",
        )
    for i, (label, (mean, _std, _n)) in enumerate(references):
        ax.axhline(100 * mean, linestyle="--", color=f"C{len(lines) + i}", label=label)
    ax.set_xlabel("stop guidance t_SG (guidance on while step index > t_SG)")
    ax.set_ylabel(f"{'final' if 'final' in metric else 'best'} test top-1 (%)")
    ax.set_title("accuracy vs t_SG, one line per λ", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


# -- paired differences to a baseline ------------------------------------------------------------
VERDICT_RULE = (
    "verdict: better if the 95% CI lies above 0, worse if below 0, not resolved if it contains 0, "
    "n/a if n < 2"
)


@dataclass
class Comparison:
    """One config against the baseline: per pair (seed, ...), (its value, the baseline's)."""

    config: str
    pairs: dict[tuple, tuple[float, float]]

    @property
    def diffs(self) -> list[float]:
        """Paired differences in points."""
        return [100 * (mine - base) for mine, base in self.pairs.values()]


@dataclass
class Baseline:
    """The jobs a ``key=value`` override names, and how every other job finds its partner there."""

    key: str
    value: str
    jobs: list[Job]
    keys: list[str]  # besides the seed, jobs pair on these (pairing_keys)

    @classmethod
    def of(cls, text: str, jobs: list[Job]) -> Baseline:
        key, sep, value = text.partition("=")
        key = key.lstrip("+~")
        if not sep or not key or not value:
            raise ValueError(f"{text!r} is not key=value (e.g. method=unguided)")
        if ignored(key):
            raise ValueError(f"{key} is not a config key (the seed is what pairs the jobs)")
        matched = [
            j for j in jobs if key in j.overrides and parse_value(j.overrides[key]) == parse_value(value)
        ]
        if not matched:
            seen = unique(j.overrides.get(key) for j in jobs) or "never set"
            raise ValueError(f"{key}={value} matches no job ({key} in this sweep: {seen})")
        return cls(key, value, matched, pairing_keys(jobs, matched, key))

    def holds(self, job: Job) -> bool:
        return any(job is b for b in self.jobs)

    def pair_of(self, job: Job) -> tuple:
        return (job_seed(job), *(job.overrides.get(k) for k in self.keys))

    def describe(self, job: Job) -> str:
        values = [f"{k}={job.overrides[k]}" if k in job.overrides else f"{k} unset" for k in self.keys]
        return ", ".join([f"seed={job_seed(job)}", *values])


def job_seed(job: Job):
    """The job's seed override; without one the seed it ran with (metrics.json), e.g. the default."""
    return parse_value(job.overrides["seed"]) if "seed" in job.overrides else job.metrics.get("seed")


def job_accuracy(job: Job, metric: str) -> float | None:
    """One number per job: the mean over its student repeats (the students of one set are not
    independent samples of the set's quality, so the job, not the student, is the sample)."""
    values = metric_values([job], metric)
    return statistics.fmean(values) if values else None


def pairing_keys(jobs: list[Job], baseline_jobs: list[Job], key: str) -> list[str]:
    """Besides the seed, jobs pair on the overrides the baseline jobs set (other than ``key``) that
    vary in the sweep: dataset=digits in the baseline keeps a dataset=cifar10 job from pairing with
    it. A key the baseline never sets (method.t_sg against method=unguided) is no part of it: every
    value of that key is compared with the same baseline job."""
    identities = [dict(job.identity) for job in jobs]
    varying = {k for identity in identities for k in identity if len({i.get(k) for i in identities}) > 1}
    return sorted({k for job in baseline_jobs for k, _ in job.identity} & varying - {key})


def compare_to_baseline(
    rows: list[dict], base: Baseline, metric: str
) -> tuple[list[Comparison], list[tuple[Job, str]]]:
    """One Comparison per config that is not the baseline (table order); the jobs left unpaired, why."""
    partners: dict[tuple, list[float]] = {}
    unpaired = []
    for job in base.jobs:
        acc = job_accuracy(job, metric)
        if acc is None:
            unpaired.append((job, f"no {metric}"))
        else:
            partners.setdefault(base.pair_of(job), []).append(acc)
    comparisons = []
    for row in rows:
        if not base.holds(row["members"][0]):
            comparison, left = compare_config(row, base, partners, metric)
            comparisons.append(comparison)
            unpaired += left
    used = {pair for comparison in comparisons for pair in comparison.pairs}
    unpaired += [
        (j, "no other job pairs with it") for j in base.jobs if base.pair_of(j) in partners.keys() - used
    ]
    return comparisons, unpaired


def compare_config(row: dict, base: Baseline, partners: dict, metric: str) -> tuple[Comparison, list]:
    values: dict[tuple, list[float]] = {}
    unpaired = []
    for job in row["members"]:
        acc, pair = job_accuracy(job, metric), base.pair_of(job)
        if acc is None:
            unpaired.append((job, f"no {metric}"))
        elif pair not in partners:
            unpaired.append((job, f"no {base.key}={base.value} job with {base.describe(job)}"))
        else:
            values.setdefault(pair, []).append(acc)
    # a seed run twice (two sweeps in one folder tree) is one pair, at the mean of its jobs
    pairs = {pair: (statistics.fmean(v), statistics.fmean(partners[pair])) for pair, v in values.items()}
    return Comparison(row["config"], pairs), unpaired


def verdict(ci: tuple[float, float] | None) -> str:
    if ci is None:
        return "n/a"
    return "better" if ci[0] > 0 else "worse" if ci[1] < 0 else "not resolved"


def paired_markdown(
    comparisons: list[Comparison], unpaired: list, base: Baseline, metric: str, root: Path
) -> str:
    title = next(t for k, t, *_ in METRICS if k == metric)
    on = ", ".join(["seed", *base.keys])
    lines = [
        f"Paired difference to {base.key}={base.value}: {title} of each config minus that of the "
        f"{base.key}={base.value} job with the same {on}, in points; a job's value is the mean over "
        "its student repeats.",
        f"95% CI: mean ± t(0.975, n-1)·sd/√n over the n pairs; {VERDICT_RULE}.",
        "",
        f"| config | n | Δ {title} | 95% CI | verdict |",
        "|---|---|---|---|---|",
    ]
    for comparison in comparisons:
        diffs = comparison.diffs
        ci = t_interval(diffs)
        mean = f"{statistics.fmean(diffs):+.2f}" if diffs else ""
        interval = f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "n/a"
        lines.append(f"| {comparison.config} | {len(diffs)} | {mean} | {interval} | {verdict(ci)} |")
    for job, why in unpaired:
        name = job.folder.relative_to(root) if job.folder.is_relative_to(root) else job.folder
        lines.append(f"unpaired: {name} ({why})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--csv", type=Path, default=None, help="also write the table as CSV")
    parser.add_argument(
        "--curves", type=Path, default=None, help="PNG of accuracy vs method.t_sg, one line per method.lam"
    )
    parser.add_argument(
        "--baseline",
        default=None,
        metavar="KEY=VALUE",
        help="also print each config's accuracy minus this override's, paired by seed, with a 95%% CI",
    )
    parser.add_argument(
        "--metric",
        "--acc",
        choices=["final", "best"],
        default="final",
        help="accuracy for --curves and --baseline (default: final; best picks its epoch on the test set)",
    )
    args = parser.parse_args(argv)
    jobs = collect(args.sweep_dir)
    if not jobs:
        print(
            f"error: no metrics.json under {args.sweep_dir} (is it a multirun folder whose jobs finished?)",
            file=sys.stderr,
        )
        return 2
    unfinished = [
        p.name
        for p in sorted(args.sweep_dir.iterdir())
        if p.is_dir() and (p / ".hydra").is_dir() and not (p / "metrics.json").is_file()
    ]
    if unfinished:
        print(
            f"note: {len(unfinished)} job(s) without metrics.json left out: {', '.join(unfinished[:3])}",
            file=sys.stderr,
        )
    rows = group_jobs(jobs)
    try:
        base = Baseline.of(args.baseline, jobs) if args.baseline else None
    except ValueError as exc:
        print(f"error: --baseline: {exc}", file=sys.stderr)
        return 2
    print(markdown(rows))
    status = print_paired(rows, base, f"student/{args.metric}_acc", args.sweep_dir) if base else 0
    if args.csv:
        write_csv(rows, args.csv)
    if args.curves:
        try:
            save_curves(rows, args.curves, f"student/{args.metric}_acc")
        except ValueError as exc:
            print(f"error: --curves: {exc}", file=sys.stderr)
            return 2
    return status


def print_paired(rows: list[dict], base: Baseline, metric: str, root: Path) -> int:
    """The paired table after the main one; 2 when no config has the 2 pairs a CI needs."""
    comparisons, unpaired = compare_to_baseline(rows, base, metric)
    print("\n" + paired_markdown(comparisons, unpaired, base, metric, root))
    if not any(len(c.pairs) >= 2 for c in comparisons):
        most = max((len(c.pairs) for c in comparisons), default=0)
        print(
            f"error: --baseline {base.key}={base.value}: at most {most} pair(s) per config, a CI needs 2 "
            "(run more seeds: -m ... seed=0,1,2)",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The reference experiment's report (``results/reference.md`` and ``reference.json``)
from its finished jobs (the plan: ``experiments/reference_plan.py``).

A table cell is mean +- std over the set seeds, one student each; rows are compared seed by
seed (the student of seed s is the same for every method). Every claim states its paired
differences, their 95% confidence interval (``experiments/paired.py``) and the verdict by
``RULE``.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ddapp.figures import save_figure  # noqa: E402
from experiments.paired import t_interval  # noqa: E402
from experiments.reference_plan import (  # noqa: E402
    BEST,
    CHECK_FACTOR,
    COMPONENTS,
    GENERATED,
    GUIDANCE_OFF,
    LATENT_SUFFIX,
    METHODS,
    PATCHSEL_ABLATIONS,
    ROOT,
    SELECTION_SEED,
    VALIDATION,
    best_setting,
    convergence_name,
    ipcs_of,
    seed_name,
    slug,
    sweep_name,
    table_name,
)

RULE = (
    "a claim A > B **held** when the 95% confidence interval of the mean paired difference A - B "
    "(Student t with n - 1 degrees of freedom over the n seeds both rows finished) lies above 0, "
    "is **contradicted** when it lies below 0, and is **not resolved** when it contains 0 (or n < 2)"
)

HEADER = """# Reference experiment

Produced by `make reference` (`python experiments/reference.py --workers 2`: two jobs at a time,
one thread each, on a 2-core machine); every number below is read from a job folder's
`metrics.json` under `{runs}`.
Jobs: {finished} of {planned} finished; total job time {hours:.2f} h, {wall}.

**Seeds and the test.** Every table set is distilled with each of the {n_seeds} set seeds
{seeds} and evaluated by one student; the student of seed s is the same for every method
(paired). A cell is mean ± std over the seeds (n = {n_seeds}, one student each). "final" is the
last of 2 test evaluations, "best" the better of the two (it peeks at the test set). Rule: {rule}.
Smallest resolvable difference (one test image): {resolution}.

**Selection off the test set.** The t_SG and lam sweeps run on a validation split held out of
the train split ({validation}; the method and the students never see it; the shipped generator
was trained on the whole train split) with set seed {selection_seed} and the schedule's 3
students, paired by student. "{best}" is the sweeps' best mean final top-1 on that split,
reported on the test split. No other setting was chosen on any split.

**Student schedule** (`conf/experiment/reference.yaml`, `EPOCHS` and `SOFT_EPOCHS_FACTOR` in
`experiments/reference_plan.py`): one ConvNet-16 (depth 2 at 16 px, 3 at 28 px) for every method
and both protocols; hard labels 500 / 200 / 100 epochs at IPC 1 / 10 / 50, soft labels 4x as
many; full-data references 30 epochs (digits) and 10 (Fashion-MNIST). Hard labels: SGD lr 0.01,
momentum 0.9, MultiStepLR at 2/3 and 5/6; soft labels: AdamW and RDED's cosine, with a
ConvNet-32 teacher trained 10 epochs on the train split (`task=train_teacher`'s code path,
cached). The schedule was chosen on random real subsets before any method was compared
(docs/reference.md tells how); whether the students converge is checked below.
Each set is distilled once per seed, under its row's first protocol; the other protocol's job
evaluates that set (`task=evaluate`). Minimax is in the hard-label tables and RDED in the
soft-label ones, as in the papers that compare with them; Minimax fine-tunes with the official
recipe (8 epochs, at most 12,000 steps: 1,347 on digits, 12,000 on Fashion-MNIST). One
generator per dataset: the shipped `dit_tiny` (digits) and `unet_tiny` at 16 px
(Fashion-MNIST). Digits has no IPC 50 tables: 50 images would be 37 % of a class.
"""


# -- records --------------------------------------------------------------------------------
def load(runs: Path, aliases: dict[str, str] | None = None) -> dict[str, dict]:
    """job name -> {"metrics", "seconds", "folder", "overrides", "config"} for every finished job under
    ``runs``; an alias (a job with the configuration of another) shares that job's entry."""
    jobs = {}
    for record in runs.rglob("job.json"):
        folder = record.parent
        metrics_file = folder / "metrics.json"
        job = json.loads(record.read_text())
        if metrics_file.is_file() or "error" in job:
            jobs[str(folder.relative_to(runs))] = {
                "metrics": json.loads(metrics_file.read_text()) if metrics_file.is_file() else {},
                # with the time spent distilling its source set again (a resumed fresh clone)
                "seconds": job.get("seconds", 0.0) + job.get("source_seconds", 0.0),
                "ended": job.get("ended"),
                "overrides": job.get("overrides", []),
                "config": job.get("config"),
                "error": job.get("error"),
                "folder": folder,
            }
    for alias, name in (aliases or {}).items():
        if name in jobs:
            jobs[alias] = {**jobs[name], "seconds": 0.0, "same_as": name}
    return jobs


def wall_time(jobs: dict[str, dict]) -> str:
    """The elapsed time of the runs: the union of the jobs' [end - seconds, end] intervals
    (``--workers`` overlaps them); jobs recorded before end times were kept ran one at a time,
    so each counts its own seconds."""
    own = [j for j in jobs.values() if "same_as" not in j]
    timed = sorted((j["ended"] - j["seconds"], j["ended"]) for j in own if j.get("ended"))
    untimed = sum(j["seconds"] for j in own if not j.get("ended"))
    elapsed, end = 0.0, -math.inf
    for a, b in timed:
        elapsed += max(0.0, b - max(a, end))
        end = max(end, b)
    hours = (elapsed + untimed) / 3600
    return f"wall time {hours:.2f} h ({len(timed)} jobs with end times, overlaps counted once)"


def acc(job: dict | None, key: str = "final") -> float | None:
    """A job's mean top-1 over its students, in %."""
    if not job:
        return None
    value = job["metrics"].get(f"student/{key}_acc_mean")
    return None if value is None else 100 * value


def stat(job: dict | None, key: str = "final") -> tuple[float, float] | None:
    """Mean and std over one job's students (a sweep job's 3), in %."""
    if acc(job, key) is None:
        return None
    return acc(job, key), 100 * (job["metrics"].get(f"student/{key}_acc_std") or 0.0)


def per_seed(jobs: dict, cell: str, seeds, key: str = "final") -> dict[int, float]:
    """seed -> top-1 (%) of the cell's finished seed jobs."""
    found = {s: acc(jobs.get(seed_name(cell, s)), key) for s in seeds}
    return {s: v for s, v in found.items() if v is not None}


def cell_stat(jobs: dict, cell: str, seeds, key: str = "final") -> tuple[float, float, int] | None:
    values = list(per_seed(jobs, cell, seeds, key).values())
    if not values:
        return None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values)


def fmt(s) -> str:
    if s is None:
        return "-"
    text = f"{s[0]:.1f} ± {s[1]:.1f}"
    return text if len(s) < 3 or s[2] == 0 else text + ("" if s[2] >= 3 else f" (n={s[2]})")


def failed(jobs: dict, cell: str, seeds) -> str | None:
    """The one-line error of a cell whose setting the dataset cannot take."""
    for s in seeds:
        job = jobs.get(seed_name(cell, s))
        if job and job.get("error"):
            return job["error"]
    return None


def same_sets(jobs: dict, a: str, b: str, seeds) -> bool:
    """Whether two cells hold the same images at every seed (``set/digest``)."""
    digests = [
        (jobs.get(seed_name(a, s), {}).get("metrics", {}), jobs.get(seed_name(b, s), {}).get("metrics", {}))
        for s in seeds
    ]
    return all(x.get("set/digest") and x.get("set/digest") == y.get("set/digest") for x, y in digests)


def cell(jobs: dict, name: str, seeds, key: str = "final") -> str:
    """A table cell: mean ± std, "n/a" for a setting the dataset cannot take, "-" when not run."""
    return "n/a" if failed(jobs, name, seeds) else fmt(cell_stat(jobs, name, seeds, key))


# -- the paired test ------------------------------------------------------------------------
def compare(claim: str, a: dict[int, float], b: dict[int, float]) -> dict:
    """A claim A > B from per-pair values: the differences over the pairs both have, their
    mean, 95% CI and verdict by ``RULE``."""
    pairs = sorted(set(a) & set(b))
    diffs = [a[p] - b[p] for p in pairs]
    ci = t_interval(diffs)
    return {
        "claim": claim,
        "pairs": pairs,
        "a": [a[p] for p in pairs],
        "b": [b[p] for p in pairs],
        "diffs": diffs,
        "mean": statistics.fmean(diffs) if diffs else None,
        "ci": list(ci) if ci else None,
        "verdict": verdict(ci, len(diffs)),
    }


def verdict(ci: tuple[float, float] | None, n: int) -> str:
    if n == 0:
        return "not run"
    if ci is None:
        return "not resolved"
    return "held" if ci[0] > 0 else "contradicted" if ci[1] < 0 else "not resolved"


def claim_line(c: dict) -> str:
    if not c["pairs"]:
        return f"- {c['claim']}: not run"
    a, b = statistics.fmean(c["a"]), statistics.fmean(c["b"])
    ci = f"[{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}]" if c["ci"] else "n/a"
    diffs = ", ".join(f"{d:+.1f}" for d in c["diffs"])
    return (
        f"- {c['claim']}: **{c['verdict']}** ({a:.1f} vs {b:.1f}; differences {diffs}; "
        f"mean {c['mean']:+.2f}, 95% CI {ci}, n = {len(c['pairs'])})"
    )


def claims(jobs: dict, dataset: str, plan: dict) -> list[dict]:
    seeds = plan["seeds"]

    def rows(protocol, ipc, a, b):
        return (
            per_seed(jobs, table_name(dataset, protocol, ipc, a), seeds),
            per_seed(jobs, table_name(dataset, protocol, ipc, b), seeds),
        )

    pairs = [
        ("hard_label", "MGD^3 (paper defaults)", "unguided", "MGD^3 beats unguided"),
        ("hard_label", "MGD^3 (paper defaults)", "random real", "generated (MGD^3) beats random real"),
        ("hard_label", "MGD^3 (paper defaults)", "Minimax", "MGD^3 beats Minimax"),
        (
            "soft_label",
            "patch selection (single)",
            "random real",
            "patch selection (single) beats random real",
        ),
        ("soft_label", "patch selection (single)", "RDED", "patch selection (single) beats RDED"),
    ]
    out = []
    for ipc in ipcs_of(plan, dataset):
        for protocol, a, b, text in pairs:
            if a in plan["methods"] and b in plan["methods"]:
                label = f"{text} ({protocol.replace('_', ' ')}s, IPC {ipc})"
                out.append(compare(label, *rows(protocol, ipc, a, b)))
    # the sweeps' choice, made on the validation split, is tested on the test split with fresh
    # set seeds; a choice of guidance off (the unguided sets themselves) has nothing to test
    if "unguided" in plan["methods"]:
        for ipc in ipcs_of(plan, dataset):
            best, unguided = (table_name(dataset, "hard_label", ipc, m) for m in (BEST, "unguided"))
            if not same_sets(jobs, best, unguided, seeds):
                text = f"MGD^3 at the sweeps' choice beats unguided (hard labels, IPC {ipc})"
                out.append(compare(text, per_seed(jobs, best, seeds), per_seed(jobs, unguided, seeds)))
    if plan["ablations"]:
        names = list(COMPONENTS)
        for i in (1, 2):
            a, b = (per_seed(jobs, f"{dataset}/components/{slug(names[j])}", seeds) for j in (i, i - 1))
            out.append(compare(f"component '{names[i]}' adds over '{names[i - 1]}'", a, b))
        a, b = (per_seed(jobs, f"{dataset}/patchsel/{slug(k)}", seeds) for k in list(PATCHSEL_ABLATIONS)[:2])
        out.append(compare(f"clustering helps (patch selection, soft labels, IPC {plan['sweep_ipc']})", a, b))
    return out


# -- tables ---------------------------------------------------------------------------------
def method_table(jobs: dict, dataset: str, protocol: str, ipcs, labels, seeds) -> list[str]:
    """One row per method; a row whose sets are another row's at every seed says so once."""
    lines = [
        "| method | " + " | ".join(f"IPC {i} final | IPC {i} best" for i in ipcs) + " |",
        "|---|" + "---|---|" * len(ipcs),
    ]
    for row, label in enumerate(labels):
        cells = []
        for ipc in ipcs:
            name = table_name(dataset, protocol, ipc, label)
            twin = next(
                (
                    o
                    for o in labels[:row]
                    if same_sets(jobs, table_name(dataset, protocol, ipc, o), name, seeds)
                ),
                None,
            )
            if twin is not None:
                cells += [f"= {twin} (same sets)", ""]
            elif failed(jobs, name, seeds):
                cells += ["n/a", "n/a"]
            else:
                cells += [cell(jobs, name, seeds), cell(jobs, name, seeds, "best")]
        if any(c not in ("-", "") for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def ranking_table(jobs: dict, dataset: str, protocol: str, ipc: int, labels, seeds) -> list[str]:
    lines = ["| method | full data | random real | HLR | IOR | LRS |", "|---|---|---|---|---|---|"]
    for label in labels:
        found = [jobs.get(seed_name(table_name(dataset, protocol, ipc, label), s)) for s in seeds]
        found = [j["metrics"] for j in found if j]
        if not found:
            continue

        def mean(key, scale=100.0, digits=1, found=found):
            values = [m[key] for m in found if m.get(key) is not None]
            return "-" if not values else f"{scale * statistics.fmean(values):.{digits}f}"

        lines.append(
            f"| {label} | {mean('reference/full_hard_acc')} | {mean('reference/random_acc')}"
            f" | {mean('ddranking/hlr')} | {mean('ddranking/ior')} | {mean('ddranking/lrs', 1.0, 3)} |"
        )
    return lines


def rows_table(jobs: dict, names: dict[str, str], title: str, seeds=None) -> list[str]:
    """Rows of single jobs (``seeds`` None: a sweep job's students) or of seed cells."""
    lines = [f"| {title} | final | best |", "|---|---|---|"]
    for label, name in names.items():
        if seeds is None:
            final, best = fmt(stat(jobs.get(name))), fmt(stat(jobs.get(name), "best"))
        else:
            final, best = cell(jobs, name, seeds), cell(jobs, name, seeds, "best")
        lines.append(f"| {label} | {final} | {best} |")
    return lines


def sweep_rows(dataset: str, plan: dict) -> tuple[dict[str, str], dict[str, str]]:
    tsg = {
        f"t_SG = {t}" + (" (= unguided: guidance never applies)" if t == GUIDANCE_OFF else ""): sweep_name(
            dataset, f"tsg{t}"
        )
        for t in plan["t_sg"]
    }
    lam = {
        f"lam = {v}" + (" (= t_SG 25 above)" if v == 0.1 else ""): sweep_name(dataset, f"lam{v}")
        for v in plan["lams"]
    }
    return tsg, lam


def schedule_check(jobs: dict, plan: dict) -> list[str]:
    """Did the students converge? Each table's random real sets evaluated again by students
    trained ``CHECK_FACTOR`` x as long (the convergence jobs): converged where their final top-1
    is within 1 point of the table's. Then the largest final-minus-best gap of any row (a test
    accuracy that peaked halfway and fell)."""
    seeds = plan["seeds"]
    lines = [
        "## Student schedule check\n",
        f"Random real, set seed {seeds[0]}: the table's final top-1 -> the final top-1 of the student",
        f"trained {CHECK_FACTOR}x as long on the same set (the `<dataset>/convergence/...` jobs), and the",
        "difference; the schedule has converged where it is within 1 point. Then the largest",
        "final-minus-best gap of any method's row in the same table (mean over the seeds): a large",
        "negative gap means test accuracy peaked halfway and fell while the student kept fitting the set.\n",
        "| dataset | protocol | " + " | ".join(f"IPC {i}" for i in plan["ipcs"]) + " |",
        "|---|---|" + "---|" * len(plan["ipcs"]),
    ]
    for dataset in plan["datasets"]:
        for protocol in ("hard_label", "soft_label"):
            cells = []
            for ipc in plan["ipcs"]:
                if ipc not in ipcs_of(plan, dataset):
                    cells.append("-")
                    continue
                gaps = {}
                for label in [*METHODS, BEST]:
                    name = table_name(dataset, protocol, ipc, label)
                    final, best = cell_stat(jobs, name, seeds), cell_stat(jobs, name, seeds, "best")
                    if final and best:
                        gaps[slug(label)] = final[0] - best[0]
                # the check's one seed: the same set and student seed, trained longer
                table = cell_stat(jobs, table_name(dataset, protocol, ipc, "random real"), seeds[:1])
                longer = cell_stat(jobs, convergence_name(dataset, protocol, ipc), seeds[:1])
                text = "-"
                if table and longer:
                    text = f"{table[0]:.1f} -> {longer[0]:.1f} ({longer[0] - table[0]:+.1f})"
                worst = min(gaps.items(), key=lambda g: g[1]) if gaps else None
                cells.append(text + (f"; worst {worst[1]:+.1f} ({worst[0]})" if worst else ""))
            lines.append(f"| {dataset} | {protocol.replace('_', ' ')}s | " + " | ".join(cells) + " |")
    return lines + [""]


def named(names: list[str], more: str = "", shown: int = 8) -> str:
    """The first ``shown`` job names in backticks, then how many more (for a header line)."""
    rest = len(names) - shown
    return ", ".join(f"`{n}`" for n in names[:shown]) + (f" and {rest} more{more}" if rest > 0 else "")


def teacher_check(jobs: dict, datasets) -> list[str]:
    """One teacher per dataset: soft-label jobs whose teacher (told apart by its recorded test
    accuracy; the cache key is the same for a build trained again elsewhere) is not the one
    most of the dataset's jobs used are named, so a table never silently mixes two teachers."""
    lines = []
    for dataset in datasets:
        builds: dict[float, list[str]] = {}
        for name, job in sorted(jobs.items()):
            value = job["metrics"].get("teacher/test_acc")
            if name.startswith(f"{dataset}/") and value is not None and "same_as" not in job:
                builds.setdefault(round(value, 6), []).append(name)
        if len(builds) > 1:
            ranked = sorted(builds.items(), key=lambda b: -len(b[1]))
            others = [n for _, names in ranked[1:] for n in names]
            counts = ", ".join(f"{100 * a:.2f}% in {len(names)}" for a, names in ranked)
            lines.append(
                f"**{dataset}'s soft-label jobs used {len(builds)} teacher builds** (test accuracy "
                f"{counts} jobs; one cache key, but a teacher trained again elsewhere can differ): "
                + named(others)
                + " used another teacher than the rest; delete their folders and rerun `make reference`.\n"
            )
    return lines


def pixel_vs_latent(jobs: dict, dataset: str, ipc: int, seeds) -> list[str]:
    """The pixel and the latent generator side by side under hard labels (``--extended``)."""
    rows = [("random real", "real images", "random real")]
    for label in ("unguided", "MGD^3 (paper defaults)"):
        rows += [(label, "pixel", label), (label, "latent (ldm_tiny)", label + LATENT_SUFFIX)]
    lines = [
        f"### Pixel vs latent generator (IPC {ipc}, hard labels)\n",
        "| method | generator | final | best |",
        "|---|---|---|---|",
    ]
    for label, generator, row in rows:
        name = table_name(dataset, "hard_label", ipc, row)
        lines.append(
            f"| {label} | {generator} | {cell(jobs, name, seeds)} | {cell(jobs, name, seeds, 'best')} |"
        )
    return lines + [""]


def commands(jobs: dict, planned: list[str], stale=()) -> list[str]:
    """How each job ran: its ``run.py`` overrides (``experiments/reference.py`` runs them in-process)."""
    lines = [
        "## Commands\n",
        "Each job is `python run.py logger=csv <overrides> hydra.run.dir=<runs>/<job>`; the driver",
        "runs them through Hydra's compose API, each in a process of its own with `--workers N`.",
        'A job marked "same as" has the configuration of another and reads its results.\n',
        "<details><summary>every job's overrides</summary>\n",
    ]
    for name in planned:
        job = jobs.get(name)
        if job is None:
            lines.append(f"- `{name}`: not run")
        elif job.get("same_as"):
            lines.append(f"- `{name}`: same as `{job['same_as']}`")
        elif job.get("error"):
            lines.append(f"- `{name}`: n/a, {job['error']} (`{' '.join(job['overrides'])}`)")
        elif name in stale:
            lines.append(f"- `{name}` ({job['seconds']:.0f} s, stale): `{' '.join(job['overrides'])}`")
        else:
            lines.append(f"- `{name}` ({job['seconds']:.0f} s): `{' '.join(job['overrides'])}`")
    return lines + ["\n</details>", ""]


# -- figures --------------------------------------------------------------------------------
def tsg_curve(jobs: dict, dataset: str, t_sgs, path: Path) -> Path | None:
    from matplotlib.figure import Figure

    points = [(t, stat(jobs.get(sweep_name(dataset, f"tsg{t}")))) for t in t_sgs]
    points = [(t, s) for t, s in points if s]
    if not points:
        return None
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.subplots()
    ax.errorbar(
        [t for t, _ in points],
        [s[0] for _, s in points],
        yerr=[s[1] for _, s in points],
        marker="o",
        capsize=3,
        label="MGD^3, lam 0.1",
    )
    ax.set_xlabel(f"t_SG (guidance while step index > t_SG; {GUIDANCE_OFF} = unguided)")
    ax.set_ylabel("final top-1 on the validation split (%)")
    ax.set_title(f"{dataset}, hard labels, validation split (MGD^3 Fig. 4a)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def side_by_side(jobs: dict, names: list[str], path: Path) -> Path | None:
    """The jobs' figures/grid.png next to each other (unguided | MGD^3)."""
    from PIL import Image

    grids = [jobs[n]["folder"] / "figures" / "grid.png" for n in names if n in jobs]
    grids = [g for g in grids if g.is_file()]
    if len(grids) < 2:
        return None
    images = [Image.open(g).convert("RGB") for g in grids]
    canvas = Image.new(
        "RGB", (sum(i.width for i in images) + 10 * (len(images) - 1), max(i.height for i in images)), "white"
    )
    x = 0
    for image in images:
        canvas.paste(image, (x, 0))
        x += image.width + 10
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def scatter(jobs: dict, names: dict[str, str], path: Path) -> Path | None:
    from matplotlib.figure import Figure

    points = [(label, jobs[n]["metrics"]) for label, n in names.items() if n in jobs]
    points = [
        (label, m)
        for label, m in points
        if m.get("set/diversity_mean") is not None and m.get("set/representativeness_mean")
    ]
    if not points:
        return None
    fig = Figure(figsize=(6, 4.4), dpi=100)
    ax = fig.subplots()
    for i, (label, m) in enumerate(points):
        ax.scatter(m["set/representativeness_mean"], m["set/diversity_mean"], color=f"C{i}", label=label)
    ax.set_xlabel("representativeness (mean distance to 50 nearest real; lower = better)")
    ax.set_ylabel("diversity (min distance within class)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


# -- the report -----------------------------------------------------------------------------
def split_sizes(dataset: str) -> tuple[int, int] | None:
    """(test images, validation images) of a dataset as the plan uses it; None if absent here."""
    from ddcore.data.base import hold_out_validation
    from ddcore.data.small import digits, fashion_mnist
    from ddcore.errors import UserError

    try:
        data = {"digits": digits, "fashion_mnist": fashion_mnist}[dataset]()
    except (KeyError, UserError):
        return None
    held = hold_out_validation(data, VALIDATION.get(dataset, 0.2), 0)
    return len(data.test), len(held.test)


def resolution_text(datasets) -> tuple[str, str]:
    one, split = [], []
    for dataset in datasets:
        sizes = split_sizes(dataset)
        if sizes:
            one.append(f"{100 / sizes[0]:.2f} points on {dataset} ({sizes[0]} test images)")
            split.append(f"{dataset}: {sizes[1]} images, {VALIDATION.get(dataset, 0.2):g} of each class")
    return "; ".join(one) or "-", "; ".join(split) or "-"


def write_report(
    runs: Path, out: Path, plan: dict, aliases: dict[str, str], planned: list[str], stale: list[str] = ()
) -> Path:
    """``stale``: finished jobs whose recorded overrides are not the plan's now (the plan changed
    after they ran); their rows stay, the header names them, and ``make reference`` reruns them."""
    jobs = load(runs, aliases)
    seeds = plan["seeds"]
    labels = list(plan["methods"]) + [BEST]
    latent = bool(plan["latent"]) or any(name.split("/")[3:4] == ["latent"] for name in jobs)
    if latent:
        labels += [m + LATENT_SUFFIX for m in GENERATED]
    mine = {name: jobs[name] for name in planned if name in jobs}
    shown = runs.relative_to(ROOT) if runs.is_relative_to(ROOT) else runs
    resolution, validation = resolution_text(plan["datasets"])
    lines = [
        HEADER.format(
            runs=shown,
            finished=len(mine),
            planned=len(planned),
            hours=sum(j["seconds"] for j in mine.values()) / 3600,
            wall=wall_time(mine),
            n_seeds=len(seeds),
            seeds=", ".join(map(str, seeds)),
            rule=RULE,
            resolution=resolution,
            validation=validation,
            selection_seed=SELECTION_SEED,
            best=BEST,
        )
    ]
    if stale:
        lines.append(
            f"**{len(stale)} finished jobs ran with other settings than the plan now gives**; their rows "
            "are shown, `make reference` reruns them: "
            + named(stale, " (marked stale under Commands)")
            + ".\n"
        )
    lines += teacher_check(jobs, plan["datasets"])
    lines += schedule_check(jobs, plan)
    figures = out / "figures"
    every_claim = {}
    for dataset in plan["datasets"]:
        chosen = best_choice(jobs, dataset, plan)
        ipcs = ipcs_of(plan, dataset)
        lines.append(f"## {dataset}\n")
        if chosen:
            lines.append(f"{BEST}: {chosen}, chosen on the validation split.\n")
        for protocol in ("hard_label", "soft_label"):
            lines += [
                f"### {protocol.replace('_', ' ')}s\n",
                *method_table(jobs, dataset, protocol, ipcs_of(plan, dataset), labels, seeds),
                "",
                f"References and DD-Ranking scores at IPC {ipcs[-1]}, mean over seeds "
                "(%, LRS as a fraction):\n",
                *ranking_table(jobs, dataset, protocol, ipcs[-1], labels, seeds),
                "",
            ]
        tsg, lam = sweep_rows(dataset, plan)
        lines += [
            f"### t_SG sweep (MGD^3, lam 0.1, IPC {plan['sweep_ipc']}, hard labels; validation split)\n",
            *rows_table(jobs, tsg, "t_SG"),
            "",
            f"### lam sweep (MGD^3, t_SG 25, IPC {plan['sweep_ipc']}, hard labels; validation split)\n",
            *rows_table(jobs, lam, "lam"),
            "",
        ]
        if plan["ablations"]:
            comp = {k: f"{dataset}/components/{slug(k)}" for k in COMPONENTS}
            patch = {k: f"{dataset}/patchsel/{slug(k)}" for k in PATCHSEL_ABLATIONS}
            lines += [
                "### Components (MGD^3 Table 3; IPC 10, hard labels)\n",
                "'+ stop guidance (t_SG = 25)' is MGD^3 (paper defaults) at IPC 10: the same jobs.\n",
                *rows_table(jobs, comp, "row", seeds),
                "",
                "### Patch-selection ablations (IPC 10, soft labels)\n",
                "'DIFT clustering, all images' is patch selection (single) at IPC 10: the same jobs.\n",
                *rows_table(jobs, patch, "row", seeds),
                "",
            ]
        ipc = 10 if 10 in ipcs else ipcs[-1]
        first = seeds[0]
        made = [
            tsg_curve(jobs, dataset, plan["t_sg"], figures / f"{dataset}_tsg.png"),
            side_by_side(
                jobs,
                [
                    seed_name(table_name(dataset, "hard_label", ipc, m), first)
                    for m in ("unguided", "MGD^3 (paper defaults)")
                ],
                figures / f"{dataset}_unguided_vs_mgd3.png",
            ),
            scatter(
                jobs,
                {m: seed_name(table_name(dataset, "hard_label", ipc, m), first) for m in labels},
                figures / f"{dataset}_scatter.png",
            ),
        ]
        lines += ["### Figures (set seed %d)\n" % first] + [
            f"![{p.stem}](figures/{p.name})" for p in made if p
        ]
        lines.append("")
        if latent:
            lines += pixel_vs_latent(jobs, dataset, ipc, seeds)
        found = claims(jobs, dataset, plan)
        every_claim[dataset] = found
        lines += ["### Claims\n", f"Rule: {RULE}.\n", *map(claim_line, found), ""]
    lines += commands(jobs, planned, stale)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "reference.md"
    path.write_text("\n".join(lines))
    summary = {
        "rule": RULE,
        "seeds": list(seeds),
        "finished": len(mine),
        "planned": len(planned),
        "job_hours": round(sum(j["seconds"] for j in mine.values()) / 3600, 2),
        "wall": wall_time(mine),
        "claims": every_claim,
        "jobs": {
            name: {k: v for k, v in j["metrics"].items() if isinstance(v, (int, float, str))}
            for name, j in sorted(jobs.items())
        },
    }
    (out / "reference.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    return path


def best_choice(jobs: dict, dataset: str, plan: dict) -> str | None:
    """Which sweep point the best row took (``best_setting``, as the driver chose it)."""
    best = best_setting(lambda n: (jobs.get(n) or {}).get("metrics"), dataset, plan["t_sg"], plan["lams"])
    if best is None:
        return None
    value = acc(jobs.get(sweep_name(dataset, best[0])))
    same = ", that is unguided sampling" if best[0] == f"tsg{GUIDANCE_OFF}" else ""
    return f"{' '.join(best[1])}{same} ({value:.1f}% final top-1 on validation)"


# -- the README's headline: quoted from reference.json, never typed --------------------------
README_BEGIN = (
    "<!-- headline: written by `python experiments/reference_report.py --readme` "
    "from results/reference.json -->"
)
README_END = "<!-- end of headline -->"
HEADLINE = (  # (protocol, IPC, rows): the seed papers' main comparisons, at IPC 10
    ("hard_label", 10, ("MGD^3 (paper defaults)", "unguided", "Minimax", "random real")),
    ("soft_label", 10, ("patch selection (single)", "RDED", "random real")),
)


def headline(summary: dict) -> str:
    """The README's headline lines from a report's ``reference.json``: the main cells, the
    claims' verdicts and the run's cost."""
    jobs = {name: {"metrics": metrics} for name, metrics in summary["jobs"].items()}
    seeds = summary["seeds"]
    lines = []
    for dataset in sorted({name.split("/")[0] for name in jobs}):
        for protocol, ipc, labels in HEADLINE:
            cells = [
                f"{label} {fmt(cell_stat(jobs, table_name(dataset, protocol, ipc, label), seeds))}"
                for label in labels
            ]
            lines.append(f"- {dataset}, {protocol.replace('_', ' ')}s, IPC {ipc}: " + "; ".join(cells) + ".")
    claims = [
        {**c, "claim": f"{dataset}: {c['claim']}"}
        for dataset, found in sorted(summary["claims"].items())
        for c in found
        if c["verdict"] != "not run"
    ]
    counts = {v: sum(c["verdict"] == v for c in claims) for v in ("held", "contradicted", "not resolved")}
    lines.append(
        f"- Of {len(claims)} claims tested ({len(seeds)} set seeds, paired 95% t intervals): "
        + ", ".join(f"{n} {v}" for v, n in counts.items())
        + ". Held: "
        + ("; ".join(c["claim"] for c in claims if c["verdict"] == "held") or "none")
        + "."
    )
    lines.append(
        f"- The run: {summary['finished']} of {summary['planned']} jobs, {summary['job_hours']:.2f} h of job "
        f"time, {summary['wall']}, on two workers."
    )
    return "\n".join([README_BEGIN, *lines, README_END])


def update_readme(readme: Path, summary: dict) -> bool:
    """Replace the README's headline block with ``headline(summary)``; True if it changed."""
    text = readme.read_text()
    start, end = text.index(README_BEGIN), text.index(README_END) + len(README_END)
    new = text[:start] + headline(summary) + text[end:]
    if new != text:
        readme.write_text(new)
    return new != text


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="write the README's headline block from reference.json")
    parser.add_argument("--readme", action="store_true", help="rewrite README.md's headline block")
    parser.add_argument("--json", type=Path, default=ROOT / "results" / "reference.json")
    args = parser.parse_args()
    summary = json.loads(args.json.read_text())
    if args.readme:
        print("README.md " + ("updated" if update_readme(ROOT / "README.md", summary) else "unchanged"))
    else:
        print(headline(summary))
    sys.exit(0)

"""The sweep summarizer on a fabricated multirun folder: table, CSV and t_SG / lam curves."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from experiments import summarize

ROOT = Path(__file__).resolve().parents[1]


def fake_job(sweep: Path, overrides: list[str], metrics: dict, manifest_config=None, hydra=True) -> Path:
    folder = sweep / ",".join(o for o in sorted(overrides) if not o.startswith("logger"))
    folder.mkdir(parents=True)
    if hydra:
        (folder / ".hydra").mkdir()
        (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    if manifest_config is not None:
        (folder / "distilled").mkdir()
        (folder / "distilled" / "manifest.json").write_text(
            json.dumps({"method": "mgd3", "config": manifest_config})
        )
    return folder


def acc_metrics(finals, bests, seed, method="mgd3", diversity=2.0):
    return {
        "method": method,
        "ipc": 10,
        "seed": seed,
        "student/final_acc_mean": sum(finals) / len(finals),
        "student/final_acc_runs": finals,
        "student/best_acc_mean": sum(bests) / len(bests),
        "student/best_acc_runs": bests,
        "set/diversity_mean": diversity,
        "distill/seconds": 10.0 + seed,
    }


def make_sweep(tmp_path: Path) -> Path:
    """t_sg in {10, 25} x lam in {0.05, 0.1} x seed in {0, 1}, plus a random baseline and a job
    that did not finish. Final accuracy of (t, lam, seed) = t/100 + lam + seed/100 (+-0.01)."""
    sweep = tmp_path / "sweep"
    for t in (25, 10):
        for lam in (0.1, 0.05):
            for seed in (0, 1):
                base = t / 100 + lam + seed / 100
                fake_job(
                    sweep,
                    ["method=mgd3", f"method.t_sg={t}", f"method.lam={lam}", f"seed={seed}", "logger=wandb"],
                    acc_metrics(
                        [base - 0.01, base + 0.01], [base + 0.1, base + 0.1], seed, diversity=1.0 + seed
                    ),
                )
    fake_job(sweep, ["method=random", "seed=0"], acc_metrics([0.5, 0.6], [0.6, 0.7], 0, "random"))
    fake_job(sweep, ["method=mgd3", "method.t_sg=50", "method.lam=0.1", "seed=0"], None)
    return sweep


def test_table_groups_seeds_and_pools_repeats(tmp_path, capsys):
    sweep = make_sweep(tmp_path)
    assert summarize.main([str(sweep), "--csv", str(tmp_path / "t.csv")]) == 0
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    assert lines[0] == ("| config | method | ipc | jobs | final top-1 | best top-1 | diversity | distill s |")
    # rows sorted by the varying overrides (keys sorted), numbers in numeric order
    configs = [line.split(" | ")[0].lstrip("| ") for line in lines[2:]]
    assert configs == [
        "method=mgd3,method.lam=0.05,method.t_sg=10",
        "method=mgd3,method.lam=0.05,method.t_sg=25",
        "method=mgd3,method.lam=0.1,method.t_sg=10",
        "method=mgd3,method.lam=0.1,method.t_sg=25",
        "method=random",
    ]
    # t=10, lam=0.05: finals over seeds x repeats = .14, .16, .15, .17 -> 15.5 +- 1.3 (sample std)
    # bests = .25, .25, .26, .26 -> 25.5 +- 0.6; diversity 1, 2 -> 1.50 +- 0.71; seconds 10, 11
    assert lines[2] == (
        "| method=mgd3,method.lam=0.05,method.t_sg=10 | mgd3 | 10 | 2 | 15.5 ± 1.3 | "
        "25.5 ± 0.6 | 1.50 ± 0.71 | 10.5 ± 0.7 |"
    )
    assert lines[6] == "| method=random | random | 10 | 1 | 55.0 ± 7.1 | 65.0 ± 7.1 | 2.00 | 10.0 |"
    assert "1 job(s) without metrics.json left out" in out.err
    with (tmp_path / "t.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and rows[0]["jobs"] == "2" and rows[0]["seeds"] == "0/1"
    assert float(rows[0]["student/final_acc_mean"]) == pytest.approx(0.155)
    assert rows[0]["student/final_acc_n"] == "4"


def test_curves_png_has_one_line_per_lam(tmp_path):
    sweep = make_sweep(tmp_path)
    rows = summarize.group_jobs(summarize.collect(sweep))
    png = summarize.save_curves(rows, tmp_path / "curves.png")
    with Image.open(png) as im:
        assert im.format == "PNG" and 400 <= im.size[0] <= 2000 and 300 <= im.size[1] <= 2000
    from matplotlib.figure import Figure  # noqa: F401  (the figure really used matplotlib)


def test_settings_come_from_the_manifest_when_not_overridden(tmp_path):
    """A sweep over t_sg only: lam is read from distilled/manifest.json; no .hydra -> folder name."""
    sweep = tmp_path / "sweep"
    for t in (10, 20):
        fake_job(
            sweep,
            [f"method.t_sg={t}"],
            acc_metrics([0.3 + t / 100], [0.4], 0),
            manifest_config={"method": {"t_sg": t, "lam": 0.2}},
            hydra=False,
        )
    jobs = summarize.collect(sweep)
    assert [j.setting("method.t_sg") for j in jobs] == [10, 20]
    assert [j.setting("method.lam") for j in jobs] == [0.2, 0.2]
    rows = summarize.group_jobs(jobs)
    assert [r["config"] for r in rows] == ["method.t_sg=10", "method.t_sg=20"]
    summarize.save_curves(rows, tmp_path / "c.png")


def test_cli_runs_as_a_script_and_fails_clearly_on_an_empty_folder(tmp_path):
    sweep = make_sweep(tmp_path)
    script = str(ROOT / "experiments" / "summarize.py")
    proc = subprocess.run(
        [sys.executable, script, str(sweep), "--curves", str(tmp_path / "f.png")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 7 and (tmp_path / "f.png").is_file()
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, script, str(tmp_path / "empty")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: no metrics.json")


# -- --baseline: paired differences ----------------------------------------------------------------
def paired_lines(out: str) -> dict[str, list[str]]:
    """The paired table's rows by config: [n, difference, CI, verdict]."""
    section = out.split("| config | n |", 1)[1]
    rows = [line.strip("| ").split(" | ") for line in section.splitlines()[2:] if line.startswith("|")]
    return {row[0]: row[1:] for row in rows}


def test_baseline_pairs_by_seed_and_ignores_keys_the_baseline_does_not_set(tmp_path, capsys):
    """Two sweeps in one folder (docs/statistics.md): unguided at seeds 0-2 (no t_sg, which its
    schema lacks), mgd3 at three t_sg; each mgd3 job pairs with the unguided job of its seed. Each
    job has two students; its value is their mean, so n counts jobs (3), not students."""
    sweep = tmp_path / "sweep"
    unguided = {s: 0.50 + 0.01 * s for s in (0, 1, 2)}
    for s, acc in unguided.items():
        fake_job(
            sweep / "unguided",
            ["method=unguided", f"seed={s}"],
            acc_metrics([acc - 0.1, acc + 0.1], [0.9] * 2, s),
        )
    diffs = {10: (2, 3, 4), 25: (-1, 0, 2), 50: (-3, -4, -5)}  # points, seeds 0, 1, 2
    for t, points in diffs.items():
        for s, d in enumerate(points):
            acc = unguided[s] + d / 100
            fake_job(
                sweep / "mgd3",
                ["method=mgd3", f"method.t_sg={t}", f"seed={s}"],
                acc_metrics([acc - 0.05, acc + 0.05], [0.9] * 2, s),
            )
    fake_job(sweep / "mgd3", ["method=mgd3", "method.t_sg=25", "seed=3"], acc_metrics([0.5], [0.5], 3))
    assert summarize.main([str(sweep), "--baseline", "method=unguided"]) == 0
    out = capsys.readouterr().out
    assert "with the same seed, in points" in out and "better if the 95% CI lies above 0" in out
    # t(0.975, 2) = 4.3027: (2, 3, 4) -> 3 +- 4.3027 * 1/sqrt(3) = [0.52, 5.48]
    # (-1, 0, 2): sd 1.5275 -> 0.33 +- 3.79; (-3, -4, -5) -> -4 +- 2.48
    assert paired_lines(out) == {
        "method=mgd3,method.t_sg=10": ["3", "+3.00", "[+0.52, +5.48]", "better"],
        "method=mgd3,method.t_sg=25": ["3", "+0.33", "[-3.46, +4.13]", "not resolved"],
        "method=mgd3,method.t_sg=50": ["3", "-4.00", "[-6.48, -1.52]", "worse"],
    }
    assert "unpaired: mgd3/method.t_sg=25,method=mgd3,seed=3 (no method=unguided job with seed=3)" in out


def test_baseline_pairs_on_the_keys_the_baseline_jobs_vary(tmp_path):
    """unguided and mgd3 both at ipc 10 and 50: an mgd3 job pairs with the unguided job of its seed
    *and* ipc. An unguided job no one pairs with is listed; --acc best reads best_acc."""
    sweep = tmp_path / "sweep"
    for ipc, level in ((10, 0.3), (50, 0.6)):
        for s in (0, 1):
            base = level + 0.02 * s
            metrics = {**acc_metrics([base], [base + 0.1], s), "ipc": ipc}
            fake_job(sweep, ["method=unguided", f"ipc={ipc}", f"seed={s}"], metrics)
            mine = base + 0.01 * (1 + s) + ipc / 10000
            metrics = {**acc_metrics([mine], [base + 0.1 - 0.01], s), "ipc": ipc}
            fake_job(sweep, ["method=mgd3", f"ipc={ipc}", f"seed={s}"], metrics)
    fake_job(sweep, ["method=unguided", "ipc=10", "seed=2"], acc_metrics([0.3], [0.3], 2))
    jobs = summarize.collect(sweep)
    rows = summarize.group_jobs(jobs)
    base = summarize.Baseline.of("method=unguided", jobs)
    assert base.keys == ["ipc"] and len(base.jobs) == 5
    comparisons, unpaired = summarize.compare_to_baseline(rows, base, "student/final_acc")
    assert [c.config for c in comparisons] == ["ipc=10,method=mgd3", "ipc=50,method=mgd3"]
    assert comparisons[0].diffs == pytest.approx([1.1, 2.1])  # seed 0, 1 at ipc 10
    assert comparisons[1].diffs == pytest.approx([1.5, 2.5])
    assert [(j.folder.name, why) for j, why in unpaired] == [
        ("ipc=10,method=unguided,seed=2", "no other job pairs with it")
    ]
    comparisons, _ = summarize.compare_to_baseline(rows, base, "student/best_acc")
    assert comparisons[0].diffs == pytest.approx([-1.0, -1.0])
    assert [summarize.verdict(ci) for ci in [(0.1, 2), (-2, -0.1), (-1, 1), None]] == [
        "better",
        "worse",
        "not resolved",
        "n/a",
    ]


def test_a_key_the_baseline_fixes_still_pairs(tmp_path, capsys):
    """The baseline ran on digits only, mgd3 on digits and cifar10: the cifar10 jobs have no partner
    (listed, not compared with digits), while t_sg, which the baseline never sets, does not pair."""
    sweep = tmp_path / "sweep"
    for s in (0, 1):
        fake_job(sweep, ["method=unguided", "dataset=digits", f"seed={s}"], acc_metrics([0.5], [0.5], s))
        for dataset in ("digits", "cifar10"):
            for t in (10, 25):
                overrides = ["method=mgd3", f"dataset={dataset}", f"method.t_sg={t}", f"seed={s}"]
                fake_job(sweep, overrides, acc_metrics([0.5 + t / 1000 + s / 100], [0.5], s))
    assert summarize.main([str(sweep), "--baseline", "method=unguided"]) == 0
    out = capsys.readouterr().out
    assert "method=unguided job with the same seed, dataset, in points" in out
    assert paired_lines(out) == {
        "dataset=cifar10,method=mgd3,method.t_sg=10": ["0", "", "n/a", "n/a"],
        "dataset=cifar10,method=mgd3,method.t_sg=25": ["0", "", "n/a", "n/a"],
        "dataset=digits,method=mgd3,method.t_sg=10": ["2", "+1.50", "[-4.85, +7.85]", "not resolved"],
        "dataset=digits,method=mgd3,method.t_sg=25": ["2", "+3.00", "[-3.35, +9.35]", "not resolved"],
    }
    assert out.count("(no method=unguided job with seed=") == 4
    job = "dataset=cifar10,method.t_sg=10,method=mgd3,seed=1"
    assert f"unpaired: {job} (no method=unguided job with seed=1, dataset=cifar10)" in out


def test_baseline_errors_are_one_line_with_status_2(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    fake_job(sweep, ["method=unguided", "seed=0"], acc_metrics([0.5], [0.6], 0))
    fake_job(sweep, ["method=mgd3", "seed=0"], acc_metrics([0.55], [0.6], 0))
    for baseline, message in (
        ("method=random", "error: --baseline: method=random matches no job (method in this sweep: "),
        ("method", "error: --baseline: 'method' is not key=value"),
        ("seed=0", "error: --baseline: seed is not a config key"),
    ):
        assert summarize.main([str(sweep), "--baseline", baseline]) == 2
        out = capsys.readouterr()
        assert out.out == "" and out.err.startswith(message) and out.err.count("\n") == 1
    # one seed: the difference is printed, the CI is not, and the status says so
    assert summarize.main([str(sweep), "--baseline", "method=unguided"]) == 2
    out = capsys.readouterr()
    assert paired_lines(out.out) == {"method=mgd3": ["1", "+5.00", "n/a", "n/a"]}
    assert out.err == (
        "error: --baseline method=unguided: at most 1 pair(s) per config, a CI needs 2 "
        "(run more seeds: -m ... seed=0,1,2)\n"
    )


@pytest.mark.slow
def test_baseline_on_a_real_sweep_matches_the_jobs_metrics(tmp_path, capsys):
    """random and herding on digits, seeds 0 and 1, two students each, through run.py -m."""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(ROOT / "run.py"), "-m", "debug=tiny", "logger=none", "dataset=digits"]
    cmd += ["method=random,herding", "seed=0,1", "eval.repeats=2", "eval.reference.enabled=false"]
    cmd += ["report.tsne_classes=0", f"hydra.sweep.dir={sweep}", f"paths.cache_dir={tmp_path / 'cache'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    def job_mean(method, seed):
        folder = next(sweep.glob(f"*method={method},*seed={seed}"))
        runs = json.loads((folder / "metrics.json").read_text())["student/final_acc_runs"]
        assert len(runs) == 2
        return sum(runs) / 2

    diffs = [100 * (job_mean("herding", s) - job_mean("random", s)) for s in (0, 1)]
    mean = sum(diffs) / 2
    half = 12.706 * abs(diffs[0] - diffs[1]) / 2**0.5 / 2**0.5  # t(0.975, 1) * sd / sqrt(2)
    assert summarize.main([str(sweep), "--baseline", "method=random"]) == 0
    n, shown, ci, verdict = paired_lines(capsys.readouterr().out)["method=herding"]
    low, high = (float(v) for v in ci.strip("[]").split(", "))
    assert n == "2" and float(shown) == pytest.approx(mean, abs=0.006)
    assert low == pytest.approx(mean - half, abs=0.01) and high == pytest.approx(mean + half, abs=0.01)
    assert verdict == ("better" if low > 0 else "worse" if high < 0 else "not resolved")

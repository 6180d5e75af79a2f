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

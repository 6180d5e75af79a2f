"""experiments/paper_check.py: ours vs the paper's number for a run of a paper preset, and the
list of what keeps a run from the paper's scale."""

import json
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from ddapp.config_checks import job_config
from experiments import paper_check

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "experiments" / "paper_check.py")


def fake_run(
    folder: Path, cfg, metrics: dict | None, experiment: str | None = "mgd3_imagenette_table1"
) -> Path:
    """A run folder as run.py leaves it: .hydra/config.yaml, .hydra/hydra.yaml, metrics.json."""
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(job_config(cfg), folder / ".hydra" / "config.yaml")
    if experiment:
        choices = {"hydra": {"runtime": {"choices": {"experiment": experiment, "debug": None}}}}
        OmegaConf.save(OmegaConf.create(choices), folder / ".hydra" / "hydra.yaml")
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def paper_scale_metrics(**changes) -> dict:
    metrics = {
        "ipc": 10,
        "student/best_acc_mean": 0.64,
        "student/best_acc_std": 0.012,
        "student/final_acc_mean": 0.62,
        "student/final_acc_std": 0.01,
        "student/epochs": 2000,  # the IDC rule at ipc 10
        "student/repeats": 3,
    }
    return {**metrics, **changes}


def row(out: str, start: str) -> list[str]:
    return next(line for line in out.splitlines() if line.startswith(start)).split()


def test_fake_run_at_the_papers_scale(make_cfg, tmp_path, capsys):
    cfg = make_cfg("experiment=mgd3_imagenette_table1", tiny=False)
    run = fake_run(tmp_path / "run", cfg, paper_scale_metrics())
    assert paper_check.main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "Table 1, row DiT-XL/2 + MGD^3 at ipc 10" in out and "compares best top-1" in out
    assert row(out, "paper (best)")[-1] == "66.40"
    # ours best 64.00 +- 1.20: 2.40 points under the paper, -2.00 of our std, no paper std
    assert " ".join(row(out, "ours (best, compared)")[-9:]) == "64.00 ± 1.20 -2.40 n/a (no paper std) -2.00"
    assert " ".join(row(out, "ours (final)")[-9:]) == "62.00 ± 1.00 -4.40 n/a (no paper std) -4.40"
    assert "at the paper's scale: settings match experiment=mgd3_imagenette_table1" in out
    assert "NOT" not in out


def test_the_papers_std_divides_the_difference(make_cfg, tmp_path, capsys):
    cfg = make_cfg("experiment=mgd3_imagenette_table1", tiny=False)
    cfg.paper.acc[10].std = 0.8  # as if the paper gave one
    run = fake_run(tmp_path / "run", cfg, paper_scale_metrics())
    assert paper_check.main([str(run)]) == 0
    out = capsys.readouterr().out
    assert row(out, "paper (best)")[-3:] == ["66.40", "±", "0.80"]
    assert row(out, "ours (best, compared)")[-3:] == ["-2.40", "-3.00", "-2.00"]


def test_fake_run_off_scale_lists_the_differences(make_cfg, tmp_path, capsys):
    cfg = make_cfg("experiment=mgd3_imagenette_table1", "eval.student.width=32", tiny=False)
    run = fake_run(tmp_path / "run", cfg, paper_scale_metrics(**{"student/epochs": 1, "student/repeats": 1}))
    assert paper_check.main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "NOT at the paper's scale" in out
    assert "student epochs: 1 (paper scale: 2000)" in out and "student repeats: 1 (paper scale: 3)" in out
    assert "eval.student.width: 32 (preset: 64)" in out


def test_exit_2_with_one_line(make_cfg, tmp_path, capsys):
    no_paper = fake_run(tmp_path / "a", make_cfg(tiny=False), paper_scale_metrics(), experiment=None)
    cfg = make_cfg("experiment=mgd3_imagenette_table1", tiny=False)
    no_metrics = fake_run(tmp_path / "b", cfg, None)
    other_ipc = fake_run(tmp_path / "c", cfg, paper_scale_metrics(ipc=30))
    for run, says in [
        (no_paper, "no paper block"),
        (no_metrics, "no metrics.json"),
        (other_ipc, "no number at ipc 30 (it reports ipc 10, 20, 50)"),
        (tmp_path / "missing", "no .hydra/config.yaml"),
    ]:
        assert paper_check.main([str(run)]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1


def test_tiny_real_run_is_reported_as_not_at_scale(tmp_path, cache_dir):
    run = tmp_path / "run"
    subprocess.run(
        [sys.executable, "run.py", "experiment=mgd3_imagenette_table1", "dataset=digits",
         "generator=dit_tiny", "debug=tiny", "ipc=10", "logger=none", "trainer=cpu",
         "method.steps=10", "method.t_sg=5", "eval.reference.enabled=false",  # seconds, not minutes
         f"paths.cache_dir={cache_dir}", f"hydra.run.dir={run}"],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    done = subprocess.run([sys.executable, SCRIPT, str(run)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "ours (best, compared)" in out and "66.40" in out
    listed = [line.strip("- ").strip() for line in out.split("NOT at the paper's scale")[1].splitlines()[1:]]
    assert {
        "debug=tiny (shrinks every stage)",
        "student epochs: 4 (paper scale: 2000)",
        "student repeats: 1 (paper scale: 3)",
        "dataset: digits (preset: imagenette)",
        "generator: dit_tiny (preset: dit_xl2)",
        "eval.student.width: 16 (preset: 64)",
        "method.steps: 10 (preset: 50)",
        "eval.reference.enabled: false (preset: true)",
    } <= set(listed)

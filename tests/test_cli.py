"""run.py as a user types it: bad input gets one line, exit status 2 and no run folder."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(tmp_path, *args, cache=None):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        *args,
        "logger=none",
        "debug=tiny",
        f"hydra.run.dir={run_dir}",
        f"paths.cache_dir={cache or tmp_path / 'cache'}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    return proc, run_dir


def error_lines(proc):
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["dataset=nope"], "unknown dataset 'nope'"),
        (["method=mgd4"], "unknown method 'mgd4'"),
        (["generator=dit_xxl"], "unknown generator 'dit_xxl'"),
        (["dataset=imagenette", "paths.data_dir=/nonexistent"], "/nonexistent/imagenet/train"),
        (["ipc=0"], "ipc must be a positive integer"),
        (["method=random", "ipc=1000"], "ipc=1000 exceeds"),
        (["method.t_sg=60"], "method.t_sg=60 is outside [0, 50]"),
        (["method.lam=-0.1"], "method.lam must be >= 0"),
        (["dataset=fashion_mnist", "dataset.root=/nonexistent"], "Fashion-MNIST folder not found"),
        (["method=patchsel", "method.patch_size=300"], "method.patch_size=300 is larger than the image"),
        (["method=patchsel", "method.clusters=4"], "method.clusters=4 (M) is smaller than"),
    ],
)
def test_bad_input_one_line_exit_2_no_run_dir(tmp_path, args, expected):
    proc, run_dir = run(tmp_path, *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = error_lines(proc)
    assert len(lines) == 1 and expected in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not run_dir.exists()


def test_generator_with_other_classes_is_refused(tmp_path):
    """A DiT folder whose class count differs from the dataset's, loaded as dit_xl2 would be."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_generators_dit import save_tiny_dit

    folder = save_tiny_dit(tmp_path / "dit3", num_classes=3, vae=True)
    proc, run_dir = run(
        tmp_path,
        "generator=dit_xl2",
        f"generator.path={folder}",
        "generator.vae=null",
        "generator.class_space=dataset",
        "generator.resolution=16",
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "has 3 classes but dataset digits has 10" in error_lines(proc)[0]
    assert not run_dir.exists()


def test_multirun_makes_one_folder_per_override(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        "-m",
        "method=mgd3",
        "method.t_sg=0,25,50",
        "method.lam=0.1",
        "ipc=2",
        "debug=tiny",
        "logger=wandb",
        "eval.epochs=1",
        f"hydra.sweep.dir={sweep}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folders = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert folders == [
        f"debug=tiny,eval.epochs=1,ipc=2,method.lam=0.1,method.t_sg={t},method=mgd3" for t in (0, 25, 50)
    ]  # logger and paths are left out of the names
    run_ids = set()
    for name in folders:
        assert (sweep / name / "metrics.json").is_file()
        assert len(list((sweep / name / "distilled").glob("*/*.png"))) == 20
        wandb_runs = list((sweep / name / "wandb").glob("offline-run-*"))
        assert len(wandb_runs) == 1  # one wandb run per job, finished before the next starts
        run_ids.add(wandb_runs[0].name.rsplit("-", 1)[-1])
    assert len(run_ids) == 3


def test_progress_rate_reads_as_seconds_per_unit_when_slow():
    """A 78-second epoch (the Fashion-MNIST teacher on 2 cores) reads as such, not 0.0 epochs/s."""
    from ddcore.progress import format_rate

    assert format_rate(35.14, "step") == "35.1 steps/s"
    assert format_rate(1 / 78, "epoch") == "78 s/epoch"


def test_the_hydra_internals_the_one_line_errors_replace_are_still_there(monkeypatch, capsys):
    """``ddapp.cli.install_one_line_errors`` replaces ``hydra._internal.utils.run_and_report``
    (no supported hook sees composition errors): this fails when a Hydra upgrade renames it,
    changes its signature, or stops calling it through that module's global name."""
    import importlib
    import inspect

    from hydra._internal import utils as hydra_utils
    from hydra.errors import ConfigCompositionException

    from ddapp.cli import IN_TASK, install_one_line_errors

    assert list(inspect.signature(hydra_utils.run_and_report).parameters) == ["func"]
    hydra_main = importlib.import_module("hydra.main")  # the module (hydra.main is the decorator)
    assert hydra_main._run_hydra is hydra_utils._run_hydra  # @hydra.main runs through utils
    for caller in (hydra_utils._run_hydra, hydra_utils._run_app):  # a global look-up: patchable
        assert "run_and_report" in caller.__code__.co_names, caller.__name__

    monkeypatch.setattr(hydra_utils, "run_and_report", hydra_utils.run_and_report)  # restored after
    install_one_line_errors()

    def compose():
        raise ConfigCompositionException("Could not override 'method.lamm'.\nKey 'lamm' is not in struct")

    with pytest.raises(SystemExit) as exit_:
        hydra_utils.run_and_report(compose)
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Could not override 'method.lamm'")

    bug = ValueError("a bug")  # a bug in the task keeps Hydra's own report (here: full error)
    setattr(bug, IN_TASK, True)

    def task():
        raise bug

    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ValueError, match="a bug"):
        hydra_utils.run_and_report(task)

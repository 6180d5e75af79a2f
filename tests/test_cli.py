"""run.py as a user types it: bad input gets one line, exit status 2 and no run folder."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.run_many import run_cases

ROOT = Path(__file__).resolve().parents[1]


BAD_INPUT = [
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
    (["method=rded", "method.observer=/nonexistent/observer"], "no such folder"),
]
OTHER_CLASSES = "generator_with_other_classes"


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def refused(tmp_path_factory):
    """Every bad input of this module as ``python run.py <args>`` runs it, each case forked from
    one warm interpreter (tests/run_many.py): the imports are paid once, not once per case.
    Returns {case: (rc, stderr, run_dir)}."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_generators_dit import save_tiny_dit

    work = tmp_path_factory.mktemp("cli")
    # a DiT folder whose class count differs from the dataset's, loaded as dit_xl2 would be
    dit3 = save_tiny_dit(work / "dit3", num_classes=3, vae=True)
    cases = {" ".join(args): args for args, _ in BAD_INPUT}
    cases[OTHER_CLASSES] = [
        "generator=dit_xl2",
        f"generator.path={dit3}",
        "generator.vae=null",
        "generator.class_space=dataset",
        "generator.resolution=16",
    ]
    run_dirs, spec = {}, []
    for i, (name, args) in enumerate(cases.items()):
        run_dirs[name] = work / f"case{i}" / "run"
        run_dirs[name].parent.mkdir()
        argv = [*args, "logger=none", "debug=tiny", f"hydra.run.dir={run_dirs[name]}"]
        argv.append(f"paths.cache_dir={run_dirs[name].parent / 'cache'}")
        spec.append({"argv": argv, "cwd": str(run_dirs[name].parent)})
    results = run_cases(spec, work)
    return {name: (r["rc"], r["stderr"], run_dirs[name]) for name, r in zip(cases, results)}


@pytest.mark.parametrize("args, expected", BAD_INPUT)
def test_bad_input_one_line_exit_2_no_run_dir(refused, args, expected):
    rc, stderr, run_dir = refused[" ".join(args)]
    assert rc == 2, stderr[-2000:]
    lines = error_lines(stderr)
    assert len(lines) == 1 and expected in lines[0], stderr[-2000:]
    assert "Traceback" not in stderr
    assert not run_dir.exists()


def test_generator_with_other_classes_is_refused(refused):
    rc, stderr, run_dir = refused[OTHER_CLASSES]
    assert rc == 2, stderr[-2000:]
    assert "has 3 classes but dataset digits has 10" in error_lines(stderr)[0]
    assert not run_dir.exists()


def test_multirun_makes_one_folder_per_override(tmp_path, cache_dir):
    """Three mgd3 jobs with the session's cache: the tiny generator and the reference student are
    trained once for the whole test session, not again here (paths are left out of the names)."""
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
        f"paths.cache_dir={cache_dir}",
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

"""Reliability review, principles 3-5, tried through ``run.py`` as a user would: results keyed on
everything that made them, interrupts that say how to resume, and checks before any work.

Helpers and image trees come from ``tests/test_reliability.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.run_many import run_cases
from tests.test_reliability import ROOT, TINY, assert_refused, image_tree, run

FOLDER = ["method=random", "dataset=image_folder", "dataset.resolution=16"]


def swap_val_classes(root: Path, a: str = "a", b: str = "b") -> None:
    """The images of two val/ classes exchanged: same file names, the other class's content."""
    first, second = root / "val" / a, root / "val" / b
    images = {p.name: p.read_bytes() for p in first.glob("*.png")}
    for p in second.glob("*.png"):
        (first / p.name).write_bytes(p.read_bytes())
    for name, payload in images.items():
        (second / name).write_bytes(payload)


# -- 3. results keyed on everything that made them ------------------------------------------------
def test_a_rewritten_test_split_retrains_the_students(tmp_path, cache_dir):
    """A rerun into the same folder after two val/ classes swapped their images does not report
    the old accuracy: the student records are keyed on the test split's digest too."""
    root = image_tree(tmp_path / "A", per_class=4)
    run_dir = tmp_path / "run"
    first = run(run_dir, cache_dir, *FOLDER, f"dataset.root={root}")
    assert first.returncode == 0, first.stderr[-3000:]
    record = run_dir / "students" / "student" / "rep0.json"
    key_before = json.loads(record.read_text())["key"]
    manifest = json.loads((run_dir / "distilled" / "manifest.json").read_text())
    assert manifest["git_dirty"] in (True, False, "unknown")

    swap_val_classes(root)
    second = run(run_dir, cache_dir, *FOLDER, f"dataset.root={root}")
    assert second.returncode == 0, second.stderr[-3000:]
    output = second.stdout + second.stderr
    assert "trained student/rep0" in output, output[-3000:]
    assert json.loads(record.read_text())["key"] != key_before
    shutil.rmtree(tmp_path / "A")


# -- concurrent jobs in one run folder -------------------------------------------------------------
def test_two_jobs_started_at_once_in_one_folder_leave_one_record_and_log(tmp_path, cache_dir):
    """Two jobs of other settings (ipc 1 and 2) started together into one run folder: one runs,
    the other is refused in one line; the folder's ``.hydra/`` record is the winner's, and
    ``run.log`` holds no line of the refused job among the winner's (each job logs one
    ``dataset ...`` line; the winner's last is its ``result:`` line)."""
    run_dir = tmp_path / "run"
    base = [sys.executable, str(ROOT / "run.py"), "logger=none", "debug=tiny", "method=random"]
    base += [f"hydra.run.dir={run_dir}", f"paths.cache_dir={cache_dir}"]
    procs = {
        ipc: subprocess.Popen(
            [*base, f"ipc={ipc}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
        )
        for ipc in (1, 2)
    }
    results = {ipc: (proc.communicate(timeout=300), proc.returncode) for ipc, proc in procs.items()}
    [winner] = [ipc for ipc, (_, rc) in results.items() if rc == 0]
    (_, stderr), rc = results[3 - winner]
    assert_refused(rc, stderr, str(run_dir), "overrides:", f"ipc={winner} there, ipc={3 - winner} here")
    assert (run_dir / ".hydra" / "overrides.yaml").read_text().count(f"- ipc={winner}\n") == 1
    assert f"ipc: {winner}\n" in (run_dir / ".hydra" / "config.yaml").read_text()
    assert json.loads((run_dir / "distilled" / "manifest.json").read_text())["ipc"] == winner
    log_text = (run_dir / "run.log").read_text()
    assert log_text.split("result: ")[0].count("] - dataset ") == 1, log_text


# -- 5. checks before any work, for every method ---------------------------------------------------
def no_cuda() -> bool:
    import torch

    return not torch.cuda.is_available()


BAD_FILES = {"empty": b"", "bad_header": b"not an image at all"}


@pytest.fixture(scope="module")
def checked(tmp_path_factory, cache_dir):
    """The jobs of the checks below, each ``run.py <argv>`` forked from one warm interpreter
    (tests/run_many.py): the imports are paid once. Returns {case: (rc, stderr, folder)}."""
    work = tmp_path_factory.mktemp("checked")
    cases = {}
    for trainer in ("gpu", "ddp"):
        cases[trainer] = [*TINY, "method=random", f"trainer={trainer}"]
    for name, content in BAD_FILES.items():
        root = image_tree(work / name / "A")
        (root / "train" / "b" / "1.png").write_bytes(content)
        cases[name] = [*TINY, *FOLDER, f"dataset.root={root}"]
    for name in cases:
        cases[name] += [f"hydra.run.dir={work / name / 'run'}", f"paths.cache_dir={cache_dir}"]
    sweep = ["-m", *TINY, "method=random", "task=distill", f"paths.cache_dir={cache_dir}"]
    cases["bad_sweep"] = [*sweep, "eval.epochs=2,0", f"hydra.sweep.dir={work / 'bad_sweep' / 'run'}"]
    cases["good_sweep"] = [*sweep, "ipc=1,2", f"hydra.sweep.dir={work / 'good_sweep' / 'run'}"]
    spec = []
    for name, argv in cases.items():
        (work / name).mkdir(exist_ok=True)
        spec.append({"argv": argv, "cwd": str(work / name)})
    results = run_cases(spec, work)
    return {name: (r["rc"], r["stderr"], work / name / "run") for name, r in zip(cases, results)}


@pytest.mark.skipif(not no_cuda(), reason="a CUDA device is visible here")
@pytest.mark.parametrize("trainer", ["gpu", "ddp"])
def test_a_gpu_trainer_without_a_device_fails_before_distilling(checked, trainer):
    rc, stderr, run_dir = checked[trainer]
    assert_refused(rc, stderr, f"trainer={trainer}", "no CUDA device", "trainer=cpu")
    assert not (run_dir / "distilled").exists()


@pytest.mark.parametrize("content", list(BAD_FILES))
def test_a_bad_train_file_fails_before_distilling(checked, content):
    rc, stderr, run_dir = checked[content]
    assert_refused(rc, stderr, "1.png", "remove or replace the file")
    assert not (run_dir / "distilled").exists()


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9", "http://10.255.255.1"], ids=["closed_port", "non_routable"]
)
def test_wandb_online_without_a_network_logs_offline(tmp_path, cache_dir, url):
    """WANDB_MODE=online with wandb's server out of reach (a closed port: refused at once; an
    address that is not routed: no answer, or, behind an intercepting proxy, not wandb's): one
    line saying the run is logged offline, and the whole run within 30 s (it used to hang ~95 s,
    then print a traceback; behind a proxy it printed wandb's traceback)."""
    import time

    env = {"WANDB_MODE": "online", "WANDB_SILENT": "true", "WANDB_BASE_URL": url}
    start = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run.py"),
            "debug=tiny",
            "logger=wandb",
            "method=random",
            f"hydra.run.dir={tmp_path / 'run'}",
            f"paths.cache_dir={cache_dir}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={**os.environ, **env},
    )
    seconds = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "offline" in line.lower()]
    assert len(lines) == 1 and "logging offline instead" in lines[0], lines
    assert (tmp_path / "run" / "run.log").read_text().count("logging offline instead") == 1
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert seconds < 30, seconds  # the whole run: the probe <= 3 s, wandb's start <= 10 s


# -- 4. signals and interrupts ---------------------------------------------------------------------
def interrupted(run_dir: Path, cache: Path, args: list[str], signum, ready) -> subprocess.CompletedProcess:
    """``run.py`` started, sent ``signum`` once ``ready()`` holds, and waited for."""
    import time

    cmd = [sys.executable, str(ROOT / "run.py"), "logger=none", "debug=tiny", *args]
    cmd += [f"hydra.run.dir={run_dir}", f"paths.cache_dir={cache}"]
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=run_dir.parent
    )
    deadline = time.monotonic() + 300
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def assert_resumable(proc, code: int, name: str, run_dir: Path) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr[-3000:]
    assert name in lines[0] and "rerun the same command" in lines[0] and str(run_dir) in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


STUDENT = ["method=random", "eval.epochs=150", "eval.checkpoint_every=1"]


def test_sigterm_while_a_student_trains_says_how_to_resume_and_resumes(tmp_path, cache_dir):
    """A SLURM preemption (SIGTERM) mid-student: exit 143, one line naming the run folder and
    how to resume, the student's checkpoint kept; the same command then finishes the run with
    the uninterrupted run's accuracy (resumed from the epoch checkpoint, exactly)."""
    import signal

    whole = run(tmp_path / "whole", cache_dir, *STUDENT)
    assert whole.returncode == 0, whole.stderr[-3000:]
    run_dir = tmp_path / "run"
    checkpoint = run_dir / "checkpoints" / "student" / "rep0.ckpt"
    proc = interrupted(run_dir, cache_dir, STUDENT, signal.SIGTERM, checkpoint.is_file)
    assert_resumable(proc, 143, "SIGTERM", run_dir)
    assert checkpoint.is_file() and not (run_dir / "metrics.json").exists()

    again = run(run_dir, cache_dir, *STUDENT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stdout + again.stderr
    ours, theirs = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, tmp_path / "whole"))
    assert ours["student/final_acc_runs"] == theirs["student/final_acc_runs"]
    assert ours["student/histories"] == theirs["student/histories"]


FINALISER_SIGNAL = """
import os, signal
from ddapp.cli import raise_on_signals
from ddcore.interrupts import Interrupted, pending, raise_pending

raise_on_signals()


class Thing:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)  # handled while the finaliser runs


thing = Thing()
del thing
print("went on", pending(), flush=True)
try:
    raise_pending()
except Interrupted as exc:
    print("raised", exc.signum, flush=True)
try:
    os.kill(os.getpid(), signal.SIGINT)  # a second signal is heard again
    print("ignored", flush=True)
except Interrupted as exc:
    print("heard", exc.signum, flush=True)
"""


def test_a_signal_a_finaliser_swallows_is_raised_at_the_next_check_and_signals_are_heard_again():
    """A SIGTERM handled while Python runs a finaliser: the Interrupted it raises is dropped
    (the run went on and exited 0 before); the signal is kept, raised by the next check (after
    a class, a student's fit, the task), without Python printing it as ignored, and the
    handlers, which ignore signals once one is raised, are installed again."""
    done = subprocess.run(
        [sys.executable, "-c", FINALISER_SIGNAL], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.stdout.split("\n")[:3] == ["went on 15", "raised 15", "heard 2"], done.stdout + done.stderr
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_ctrl_c_while_distilling_is_one_line(tmp_path, cache_dir):
    """SIGINT (Ctrl-C) mid-distillation: exit 130 and one line (it was a 70-line traceback)."""
    import signal

    run_dir = tmp_path / "run"
    log_file = run_dir / "run.log"

    def distilling() -> bool:
        return log_file.is_file() and "mgd3: class" in log_file.read_text()

    proc = interrupted(run_dir, cache_dir, [], signal.SIGINT, distilling)
    assert_resumable(proc, 130, "SIGINT", run_dir)
    assert not (run_dir / "distilled" / "manifest.json").exists()


def test_a_bad_value_in_a_later_sweep_job_fails_before_the_first_runs(checked):
    rc, stderr, sweep = checked["bad_sweep"]
    assert_refused(rc, stderr, "sweep job 2 of 2", "eval.epochs=0", "eval.epochs must be")
    assert not list(sweep.glob("*/distilled"))  # job 1 never ran


def test_a_good_sweep_runs_every_job(checked):
    rc, stderr, sweep = checked["good_sweep"]
    assert rc == 0, stderr[-3000:]
    assert len(list(sweep.glob("*/metrics.json"))) == 2

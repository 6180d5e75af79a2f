"""Command-line front: one-line errors for unknown config choices and for UserErrors, and a
refused job's run folder tidied: removed only if this process made it, by rank 0 only; a folder
that was there before keeps everything, its ``.hydra/`` record put back. A run folder is held
(``ddcore.folder_lock``) by the processes of one set of overrides from before Hydra writes into
it until they exit: a process of other overrides is refused without writing anything there."""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hydra.experimental.callback import Callback

from ddcore import folder_lock
from ddcore.errors import UserError
from ddcore.interrupts import Interrupted, interrupt, keep_dropped_quietly

GROUPS = (
    "task",
    "dataset",
    "generator",
    "method",
    "eval",
    "trainer",
    "logger",
    "paths",
    "experiment",
    "debug",
)
SWEEP_FUNCTION = re.compile(r"^\w+\(")  # choice(...), range(...), glob(...)


def group_options(conf_dirs: list[Path], group: str) -> list[str]:
    return sorted({p.stem for d in conf_dirs for p in (d / group).glob("*.yaml")})


def search_path(argv: list[str]) -> list[Path]:
    """Config folders added with ``hydra.searchpath=[file://<dir>,...]`` (docs/adding.md)."""
    folders = []
    for arg in argv:
        key, _, value = arg.lstrip("+").partition("=")
        if key == "hydra.searchpath":
            folders += [
                Path(item.strip().strip("'\"").removeprefix("file://"))
                for item in value.strip("[]").split(",")
                if item.strip()
            ]
    return folders


def check_group_choices(argv: list[str], conf_dir: Path) -> str | None:
    """The error line for the first ``group=option`` override naming no config file, else None."""
    conf_dirs = [conf_dir, *search_path(argv)]
    for arg in argv:
        key, sep, value = arg.lstrip("+").partition("=")
        if arg.startswith("-") or not sep or key not in GROUPS or SWEEP_FUNCTION.match(value):
            continue
        options = group_options(conf_dirs, key)
        for choice in value.split(","):
            if choice not in options and choice != "null":
                return f"error: unknown {key} {choice!r} (choose one of: {', '.join(options)})"
    return None


# -- the run folder: only what this process made is removed, by rank 0 only --------------------
@dataclass(frozen=True)
class Snapshot:
    """What a run folder held before this process started: its top-level names and the bytes of
    its ``.hydra/`` record (Hydra overwrites those with this job's before the job starts)."""

    entries: frozenset[str]
    record: dict[str, bytes]


_BEFORE: dict[Path, Snapshot | None] = {}  # folders named on the command line; None: absent
_SWEEPS: set[Path] = set()  # hydra.sweep.dir folders named on the command line (children in _BEFORE)
_CREATED: dict[Path, bool] = {}  # run folders this process made (claim_run_folder's verdict)
_STARTED = time.time()
CLOCK_SLACK_S = 2.0  # coarse file-system clocks round modification times down
RESUMABLE = ("distilled", "students", "checkpoints")  # work a rerun of the same command resumes


def snapshot(folder: Path) -> Snapshot | None:
    if not folder.is_dir():
        return None
    record = {p.name: p.read_bytes() for p in (folder / ".hydra").glob("*") if p.is_file()}
    return Snapshot(frozenset(p.name for p in folder.iterdir()), record)


def folder_args(argv: list[str]) -> dict[str, Path]:
    """``hydra.run.dir`` / ``hydra.sweep.dir`` given as plain paths (not interpolations)."""
    found = {}
    for arg in argv:
        key, sep, value = arg.lstrip("+").partition("=")
        value = value.strip().strip("'\"")
        if sep and key in ("hydra.run.dir", "hydra.sweep.dir") and value and "${" not in value:
            found[key] = Path(value).resolve()
    return found


def remember_run_folders(argv: list[str]) -> None:
    """Before Hydra makes any folder: what the run (or sweep) folder named on the command line
    holds, so a refused job can tell its own folder from one that was already there."""
    global _STARTED
    _STARTED = time.time()
    folders = folder_args(argv)
    if "hydra.run.dir" in folders:
        _BEFORE[folders["hydra.run.dir"]] = snapshot(folders["hydra.run.dir"])
    sweep = folders.get("hydra.sweep.dir")
    if sweep is not None:
        _SWEEPS.add(sweep)
        for child in sweep.iterdir() if sweep.is_dir() else ():
            if child.is_dir():
                _BEFORE[child] = snapshot(child)


def log_files() -> set[Path]:
    """The files this process's logging writes (Hydra's ``<job>.log`` in the run folder)."""
    return {
        Path(h.baseFilename).resolve()
        for h in logging.getLogger().handlers
        if isinstance(h, logging.FileHandler)
    }


def claim_run_folder(output_dir: Path) -> bool:
    """Whether this process made ``output_dir`` (called as the job starts, before any work).

    A folder named on the command line was made by this process iff it was absent at startup.
    A default (time-stamped) folder counts as made here iff it holds nothing but Hydra's
    ``.hydra/`` record and this process's log file, all written since this process started.
    """
    folder = Path(output_dir).resolve()
    if folder in _BEFORE:
        created = _BEFORE[folder] is None
    elif folder.parent in _SWEEPS:
        created = True  # not among the sweep folder's children at startup
    else:
        created = holds_only_this_job(folder)
    _CREATED[folder] = created
    return created


def holds_only_this_job(folder: Path) -> bool:
    """Nothing in ``folder`` but ``.hydra/`` and this process's log, written since it started."""
    ours = {folder / ".hydra"} | {p for p in log_files() if p.parent == folder}
    ours |= {folder / name for name in LOCK_FILES}
    try:
        entries = list(folder.iterdir())
        written = entries + list((folder / ".hydra").glob("*"))
        return set(entries) <= ours and all(p.stat().st_mtime >= _STARTED - CLOCK_SLACK_S for p in written)
    except OSError:  # gone or unreadable: not ours to remove
        return False


def restore(folder: Path, before: Snapshot | None) -> None:
    """Put back the ``.hydra/`` record a folder had before this job, and remove the record and
    log files this job added to it; everything else in the folder is kept as it is."""
    if before is None:
        return  # not known at startup: left as it is
    record = folder / ".hydra"
    if ".hydra" not in before.entries:
        shutil.rmtree(record, ignore_errors=True)
    else:
        for path in record.glob("*"):
            if path.name not in before.record:
                path.unlink(missing_ok=True)
        for name, payload in before.record.items():
            (record / name).write_bytes(payload)
    for path in log_files():
        if path.parent == folder and path.name not in before.entries:
            path.unlink(missing_ok=True)
    if folder_lock.LOCK not in before.entries:
        _HELD.close()  # this job's hold first: the files go only if no other process holds them
        folder_lock.remove_if_idle(folder)


def tidy_run_folder(output_dir: Path) -> None:
    """After a refused job: remove the run folder if this process made it and it holds no work
    to resume; else restore what it held. Only rank 0 touches it (the other ranks of a job
    share the folder and may still be writing into it)."""
    from ddcore.distributed import launcher_shard

    folder = Path(output_dir).resolve()
    if not launcher_shard().is_main or not folder.is_dir() or folder == Path.cwd().resolve():
        return
    if _CREATED.get(folder, False):
        if not any((folder / name).exists() for name in RESUMABLE):
            shutil.rmtree(folder, ignore_errors=True)
    else:
        restore(folder, _BEFORE.get(folder))


# -- one job's record per run folder: held before Hydra writes into it ---------------------------
LOCK_FILES = (folder_lock.LOCK, folder_lock.SETTINGS, folder_lock.MUTEX)
_HELD = contextlib.ExitStack()  # the run folder's lock: released when the process exits


def override_differences(ours: dict, theirs: dict) -> list[str]:
    """``overrides: <theirs only> there, <ours only> here`` if the two jobs' overrides differ."""
    a, b = ours.get("overrides") or [], theirs.get("overrides") or []
    if a == b:
        return []
    there, here = [o for o in b if o not in a], [o for o in a if o not in b]
    return [f"overrides: {' '.join(there) or '(none)'} there, {' '.join(here) or '(none)'} here"]


def hold_run_folder(folder: Path, overrides: list[str]) -> None:
    """Hold ``folder`` for this job until the process exits: the processes of one launch (same
    overrides: torchrun ranks) share it; a process of other overrides gets one line, exit 2,
    and has written nothing into the folder (Hydra has not yet written its record or log)."""
    try:
        settings = {"overrides": sorted(overrides)}
        _HELD.enter_context(folder_lock.writing(folder, settings, override_differences))
    except OSError:
        return  # a folder that cannot be made or written: Hydra's own mkdir reports it
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if folder in _BEFORE and _BEFORE[folder] is None:  # absent at startup: made since by another
        now = snapshot(folder)  # job that has finished? then its record is what a refusal restores
        if now is not None and not now.entries <= set(LOCK_FILES):
            _BEFORE[folder] = now


class RunFolderLock(Callback):
    """``hydra.callbacks``: ``on_run_start`` runs after the config is composed and before Hydra
    makes the run folder, writes ``.hydra/`` and opens ``run.log`` (``hydra.core.utils.run_job``)."""

    def on_run_start(self, config, **kwargs) -> None:
        hold_run_folder(Path(str(config.hydra.run.dir)).resolve(), list(config.hydra.overrides.task))


WORKER_TRACEBACK = "\nOriginal Traceback (most recent call last):"  # torch DataLoader's re-raise
EXCEPTION_PREFIX = re.compile(r"^[\w.]+: ")


def one_line(message: str) -> str:
    """A UserError raised in a DataLoader worker (an unreadable image) comes back with the
    worker's traceback in its message: its last line is the message."""
    if WORKER_TRACEBACK not in message:
        return message
    last = [line for line in message.splitlines() if line.strip()][-1]
    return EXCEPTION_PREFIX.sub("", last.strip(), count=1)


def fail(message: str, output_dir: Path | None = None) -> None:
    """Print one line, tidy the run folder (``tidy_run_folder``), exit with status 2."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    if output_dir is not None:
        tidy_run_folder(output_dir)
    sys.exit(2)


# -- Hydra's own errors (composition, overrides, the run folder) as one line ---------------------
IN_TASK = "_dd_in_task"  # set on exceptions that escaped the task itself (bugs keep a traceback)
DROPPED = ("full_key:", "object_type=", "reference_type=", "Set the environment variable")


def error_line(exc: BaseException) -> str:
    """Hydra's 6-14-line messages (and their OmegaConf causes) folded into one line."""
    from hydra.errors import HydraException

    if isinstance(exc, OSError) and not isinstance(exc, HydraException):
        where = f" {exc.filename}" if exc.filename else ""
        return (
            f"cannot create or write{where}: {exc.strerror or exc} (set hydra.run.dir, or "
            "hydra.sweep.dir for -m, to a writable folder)"
        )
    parts: list[str] = []
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for raw in str(exc).splitlines():
            line = raw.strip()
            if line.startswith("Config search path"):
                break
            if not line or line.startswith(DROPPED) or line.startswith("provider="):
                continue
            if raw.startswith("\t") and parts:  # Hydra lists options one per tab-indented line
                parts[-1] += ("" if parts[-1].endswith(":") else ",") + f" {line}"
            elif line not in parts:
                parts.append(line)
        exc = exc.__cause__
    text = "; ".join(p.rstrip(".") for p in parts) or "invalid configuration"
    return f"{text} (python run.py --cfg job prints the composed config)"


HYDRA_TESTED = "1.3.8"  # the hydra-core pinned in pyproject.toml; tests/test_cli.py checks the internals


def install_one_line_errors() -> None:
    """Make Hydra report errors raised outside the task (config composition, bad overrides, an
    unwritable run folder) as one ``error:`` line with exit status 2.

    Hydra runs the whole app through ``hydra._internal.utils.run_and_report``, which prints them
    over several lines and exits 1; this replaces that function (tested on Hydra
    ``HYDRA_TESTED``). Hydra 1.3 has no supported hook for these errors: its ``Callback``s are
    built after the config is composed (``Hydra.run``), the run folder is made in ``run_job``
    before ``on_job_start``, and ``on_job_end`` sees only the task's own exceptions.
    ``tests/test_cli.py`` fails when the internals relied on here change. Exceptions from the
    task itself (marked ``IN_TASK``) keep Hydra's traceback, as does ``HYDRA_FULL_ERROR=1``.
    """
    import os

    from hydra._internal import utils as hydra_utils

    original = hydra_utils.run_and_report

    def run_and_report(func):
        try:
            return func()
        except Exception as exc:  # noqa: BLE001  (re-raised through Hydra's reporter below)
            if getattr(exc, IN_TASK, False) or os.environ.get("HYDRA_FULL_ERROR") == "1":

                def again(error=exc):
                    raise error

                return original(again)
            print(f"error: {error_line(exc)}", file=sys.stderr)
            sys.exit(2)

    hydra_utils.run_and_report = run_and_report


# -- interrupts: SIGTERM (a SLURM preemption, a kill) and SIGINT (Ctrl-C) ------------------------
_RUN_FOLDER: list[Path] = []  # the job's run folder, once Hydra has made it
_HANDLER_PID: list[int] = []  # the process that installed the handlers (not a forked worker)


def note_run_folder(folder: Path) -> None:
    _RUN_FOLDER[:] = [Path(folder)]


def _raise_interrupted(signum, frame) -> None:
    import os

    if _HANDLER_PID != [os.getpid()]:  # a forked DataLoader worker: its main process reports
        return
    for sig in (signal.SIGTERM, signal.SIGINT):  # a second Ctrl-C must not cut the shutdown
        signal.signal(sig, signal.SIG_IGN)
    interrupt(signum)  # raised now, or kept for raise_pending if a finaliser drops it


def raise_on_signals() -> None:
    """SIGTERM and SIGINT raise ``Interrupted`` (Lightning composes its own SIGTERM handler
    with this one while a student trains: its flag is set, then this raises)."""
    import os

    _HANDLER_PID[:] = [os.getpid()]
    keep_dropped_quietly(rearm=_install_handlers)
    _install_handlers()


def _install_handlers() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _raise_interrupted)


def report_interrupt(exc: Interrupted) -> None:
    """One line saying the run was interrupted and how to resume it; exit 128 + the signal
    (143 for SIGTERM, 130 for SIGINT), as a shell reports a process a signal ended."""
    name = signal.Signals(exc.signum).name
    where = f" in {_RUN_FOLDER[0]}" if _RUN_FOLDER else ""
    print(
        f"error: interrupted by {name}: the run{where} is resumable: rerun the same command "
        "(finished classes and students are kept; an unfinished student resumes from its last "
        "checkpoint, every eval.checkpoint_every epochs)",
        file=sys.stderr,
    )
    sys.exit(128 + exc.signum)

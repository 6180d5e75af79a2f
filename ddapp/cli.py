"""Command-line front: one-line errors for unknown config choices and for UserErrors."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

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


_RUN_RECORD: dict[Path, bytes] = {}  # an existing run folder's .hydra/ files, before this job


def remember_run_record(argv: list[str]) -> None:
    """Keep the ``.hydra/`` files of an existing ``hydra.run.dir=<folder>`` (a resume): Hydra
    overwrites them with this job's before the job starts, and a refused job puts them back."""
    for arg in argv:
        key, _, value = arg.partition("=")
        if key == "hydra.run.dir" and (Path(value) / ".hydra").is_dir():
            _RUN_RECORD.clear()
            _RUN_RECORD.update({p: p.read_bytes() for p in (Path(value) / ".hydra").glob("*.yaml")})


def fail(message: str, output_dir: Path | None = None) -> None:
    """Print one line, remove the run folder Hydra made for this job, exit with status 2.
    A folder that holds a run (being resumed, or written by another process) is kept, with its
    own ``.hydra/`` record."""
    print(f"error: {message}", file=sys.stderr)
    if output_dir is not None and output_dir.is_dir() and output_dir.resolve() != Path.cwd():
        if not (output_dir / "distilled").exists():
            shutil.rmtree(output_dir, ignore_errors=True)
        else:
            for path, payload in _RUN_RECORD.items():
                if path.parent.parent.resolve() == output_dir.resolve():
                    path.write_bytes(payload)
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


def install_one_line_errors() -> None:
    """Make Hydra report errors raised outside the task (config composition, bad overrides, an
    unwritable run folder) as one ``error:`` line with exit status 2.

    Hydra runs the whole app through ``hydra._internal.utils.run_and_report``, which prints them
    over several lines and exits 1. Exceptions from the task itself (marked ``IN_TASK``) keep
    Hydra's traceback, as does ``HYDRA_FULL_ERROR=1``.
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

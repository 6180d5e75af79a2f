"""Command-line front: one-line errors for unknown config choices and for UserErrors."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

GROUPS = ("task", "dataset", "generator", "method", "eval", "trainer", "logger", "paths",
          "experiment", "debug")
SWEEP_FUNCTION = re.compile(r"^\w+\(")  # choice(...), range(...), glob(...)


def group_options(conf_dir: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def check_group_choices(argv: list[str], conf_dir: Path) -> str | None:
    """The error line for the first ``group=option`` override naming no config file, else None."""
    for arg in argv:
        key, sep, value = arg.lstrip("+").partition("=")
        if arg.startswith("-") or not sep or key not in GROUPS or SWEEP_FUNCTION.match(value):
            continue
        options = group_options(conf_dir, key)
        for choice in value.split(","):
            if choice not in options and choice != "null":
                return f"error: unknown {key} {choice!r} (choose one of: {', '.join(options)})"
    return None


def fail(message: str, output_dir: Path | None = None) -> None:
    """Print one line, remove the run folder Hydra made for this job, exit with status 2."""
    print(f"error: {message}", file=sys.stderr)
    if (output_dir is not None and output_dir.is_dir() and output_dir.resolve() != Path.cwd()
            and not (output_dir / "distilled").exists()):  # never delete a run being resumed
        shutil.rmtree(output_dir, ignore_errors=True)
    sys.exit(2)

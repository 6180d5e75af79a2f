"""What a distilled set's manifest records about its run: method, data, settings, and the code
it came from (commit, and whether the tree differed from it)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def git(*args: str) -> str | None:
    """``git <args>``'s output in the code's folder; None outside git (or without git)."""
    try:
        return subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None


def git_commit() -> str:
    return git("rev-parse", "HEAD") or "unknown"


def git_dirty() -> bool | str:
    """Whether the code tree differs from ``git_commit`` (tracked changes or new files), so a
    result is not taken for that commit's; "unknown" outside git."""
    status = git("status", "--porcelain")
    return "unknown" if status is None else bool(status)


def resolved_config(cfg: DictConfig) -> dict:
    """The job's config as plain data (without the ``hydra`` node tests compose in)."""
    keys = [k for k in cfg.keys() if k != "hydra"]
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True)


def manifest_base(cfg: DictConfig, data, method, generator) -> dict:
    return {
        "method": method.name,
        "dataset": data.name,
        "ipc": cfg.ipc,
        "seed": cfg.seed,
        "generator": getattr(generator, "name", None),
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "config": resolved_config(cfg),
    }

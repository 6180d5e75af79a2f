"""One helper for each file mechanism: atomic writes and content keys.

``atomic_write(path, write)`` lets ``write`` fill a hidden per-process temp file beside
``path`` and renames it into place, so a reader (or a resumed run) never sees a half-written
file and two processes never write the same temp file. ``short_hash(payload)`` is the cache
key of a JSON-able payload (sorted keys, so dict order does not matter). ``load_plain(path,
what, fix)`` reads a ``torch.save`` file as data only (a crafted file's code is never run) or
fails in one line naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

from ddcore.errors import StorageError, UserError

log = logging.getLogger(__name__)


def temp_name(path: Path) -> Path:
    """A hidden, per-process temp name next to ``path`` (no suffix that readers would pick up)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def real_name(path: str | Path) -> Path:
    """The name a temp path stands for: ``.<name>.<pid>.tmp`` (``temp_name``) -> ``<name>``, and
    a path inside a ``<folder>.tmp`` folder (a cache entry being built) -> ``<folder>``."""
    parts = Path(path).parts
    for i, part in enumerate(parts):
        if part.endswith(".tmp") and len(part) > 4:
            hidden = re.fullmatch(r"\.(.+)\.\d+\.tmp", part)
            return Path(*parts[:i], hidden.group(1) if hidden else part[:-4])
    return Path(path)


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` then rename ``tmp`` to ``path`` (parents created). Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def has_meta(folder: Path) -> bool:
    """A cache entry is complete once its ``meta.json`` is written (the last file of a build)."""
    return (folder / "meta.json").is_file()


@contextlib.contextmanager
def built_in_temp(
    folder: str | Path, setting: str, built: Callable[[Path], bool] = has_meta
) -> Iterator[Path | None]:
    """Build the folder ``folder`` (a cache entry) in ``<folder>.tmp``, renamed to ``folder`` at
    the end: a failed or interrupted build leaves neither (a SIGKILL leaves the temp folder, which
    the next build removes first). Processes that build the same entry (the jobs of a ``-m``
    sweep) take turns under an ``flock`` on ``<folder>.lock``; one that finds the entry
    ``built`` once its turn comes gets None instead of a temp folder and builds nothing (the
    lock file stays: removing it could let two processes hold two locks). A full
    disk is one line naming the cache folder and the setting that chooses it (``setting``, e.g.
    ``generator.cache_dir``), not the temp path."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with open(folder.with_name(folder.name + ".lock"), "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info(f"waiting for another process that builds {folder}")
                fcntl.flock(lock, fcntl.LOCK_EX)
            if built(folder):
                yield None
                return
            try:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
                yield tmp
                shutil.rmtree(folder, ignore_errors=True)
                tmp.rename(folder)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise StorageError(
            f"cannot write {folder.name} in the cache folder {folder.parent}: "
            f"{exc.strerror or exc} (free space there or set {setting} to another folder)"
        ) from exc


def write_json(path: str | Path, payload, indent: int | None = 2) -> Path:
    text = json.dumps(payload, indent=indent, default=str)
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def short_hash(payload, length: int = 16) -> str:
    """sha256 of the payload's canonical JSON, cut to ``length`` hex digits."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def load_plain(path: str | Path, what: str, fix: str):
    """``torch.load(path, weights_only=True)`` on the CPU: tensors, numbers, strings and
    containers only, so nothing in a crafted file runs. A file that is truncated, unreadable or
    holds anything else raises one ``UserError`` line: ``cannot read <what> <path>: <why> (<fix>)``."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message suggests loading unrestricted: never for user files
        why = "it holds objects other than tensors and plain data (refused; nothing in it was run)"
    except Exception as exc:  # noqa: BLE001  (truncated, not a torch file, unreadable)
        text = str(exc).strip()
        why = text.splitlines()[0] if text else type(exc).__name__
    raise UserError(f"cannot read {what} {path}: {why} ({fix})")

"""One set of settings per distilled folder at a time: the processes writing it hold a lock.

Every writer holds a shared ``flock`` on ``<folder>/.lock`` while it writes, and the settings
it writes with (the resume fingerprint) are in ``<folder>/.lock.json``. A process that finds
other writers compares its settings with theirs: the ranks of one sharded run (same settings)
join, a process with other settings is refused at once. The check-and-join step runs under a
short exclusive lock on ``<folder>/.lock.mutex``, so two processes cannot both find the folder
idle. A killed process's locks vanish with it (the kernel releases them); its ``.lock.json`` is
simply overwritten by the next writer that finds no other. ``remove_if_idle`` deletes the three
files when nobody holds the lock (a refused job leaving a folder as it found it); a process
that was waiting for the mutex it deleted finds the path names another file, and starts over.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from ddcore.errors import UserError
from ddcore.files import write_json

LOCK, SETTINGS, MUTEX = ".lock", ".lock.json", ".lock.mutex"


@contextlib.contextmanager
def writing(folder: Path, settings: dict, differences: Callable[[dict, dict], list[str]]) -> Iterator[None]:
    """Hold ``folder`` for writing with ``settings`` (``differences(ours, theirs)`` names what
    differs from another writer's settings, for the error line)."""
    folder = Path(folder)
    with mutex(folder), contextlib.ExitStack() as on_error:
        lock = on_error.enter_context(open(folder / LOCK, "a+"))
        join(folder, lock, settings, differences)
        on_error.pop_all()
    try:
        yield
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


@contextlib.contextmanager
def mutex(folder: Path) -> Iterator[None]:
    """The short exclusive lock of the check-and-join step, on the file its path names once it
    is held (``remove_if_idle`` may delete that file while another process waits for it)."""
    while True:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / MUTEX, "a+") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            if same_file(held, folder / MUTEX):
                try:
                    yield
                finally:
                    fcntl.flock(held, fcntl.LOCK_UN)
                return


def same_file(handle, path: Path) -> bool:
    try:
        return os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def remove_if_idle(folder: Path) -> None:
    """Delete the lock's files from ``folder`` unless some process holds the lock."""
    folder = Path(folder)
    if not (folder / LOCK).is_file():
        return
    with mutex(folder), open(folder / LOCK, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        for name in (LOCK, SETTINGS, MUTEX):
            (folder / name).unlink(missing_ok=True)


def join(folder: Path, lock, settings: dict, differences) -> None:
    """Become a writer of ``folder`` (the caller holds the mutex)."""
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # succeeds only if nobody writes
    except BlockingIOError:
        theirs = read_settings(folder)
        changes = differences(settings, theirs.get("settings") or {})
        if changes:
            raise busy_error(folder, theirs, changes) from None
        fcntl.flock(lock, fcntl.LOCK_SH)  # the other writers hold it shared: granted at once
        return
    write_json(folder / SETTINGS, {"pid": os.getpid(), "settings": settings}, indent=None)
    fcntl.flock(lock, fcntl.LOCK_SH)  # exclusive -> shared, still under the mutex


def busy_error(folder: Path, theirs: dict, changes: list[str]) -> UserError:
    return UserError(
        f"{folder} is being written by another process (pid {theirs.get('pid')}) "
        f"with other settings ({'; '.join(changes[:3])}): wait for it to finish, "
        "or use a new run folder (hydra.run.dir=...)"
    )


def other_writer(folder: Path) -> dict | None:
    """The ``.lock.json`` record (pid, settings) if some process writes ``folder`` now."""
    path = Path(folder) / LOCK
    if not path.is_file():
        return None
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return read_settings(folder)
        fcntl.flock(lock, fcntl.LOCK_UN)
    return None


def read_settings(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / SETTINGS).read_text())
    except (OSError, ValueError):
        return {}

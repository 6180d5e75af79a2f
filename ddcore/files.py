"""One helper for each file mechanism: atomic writes and content keys.

``atomic_write(path, write)`` lets ``write`` fill a hidden per-process temp file beside
``path`` and renames it into place, so a reader (or a resumed run) never sees a half-written
file and two processes never write the same temp file. ``short_hash(payload)`` is the cache
key of a JSON-able payload (sorted keys, so dict order does not matter).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable


def temp_name(path: Path) -> Path:
    """A hidden, per-process temp name next to ``path`` (no suffix that readers would pick up)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


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


def write_json(path: str | Path, payload, indent: int | None = 2) -> Path:
    text = json.dumps(payload, indent=indent, default=str)
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def short_hash(payload, length: int = 16) -> str:
    """sha256 of the payload's canonical JSON, cut to ``length`` hex digits."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]

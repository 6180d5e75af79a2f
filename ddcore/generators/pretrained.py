"""Loading pretrained components from a hub id or a local folder, with one-line errors.

diffusers and transformers report a missing model as a multi-line OSError (or a ValueError for
paths that are not valid repo ids); the user needs to know which component is missing, whether
the path was read as a folder or a hub id, and what to set instead.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

import torch

from ddcore.errors import UserError

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UserError(f"unknown generator.dtype {name!r} (use one of {', '.join(DTYPES)})")
    return DTYPES[name]


def load_component(cls, path: str | Path, subfolder: str | None = None, **kwargs):
    """``cls.from_pretrained(path, subfolder=subfolder, **kwargs)``, failing with a UserError.

    A hub id is read from the local hub cache only (no request) when the hub is offline, so an
    offline machine gets the one-line error at once instead of a minute of retries.
    """
    if not Path(path).expanduser().is_dir() and hub_offline():
        kwargs.setdefault("local_files_only", True)
    try:
        return cls.from_pretrained(str(path), subfolder=subfolder, **kwargs)
    except (OSError, ValueError) as exc:  # EnvironmentError is OSError; HFValidationError a ValueError
        raise component_error(cls, path, subfolder, exc) from exc


def component_error(
    cls, path: str | Path, subfolder: str | None, exc: BaseException | None = None
) -> UserError:
    """The one-line error for a component that could not be loaded from ``path``."""
    what = subfolder or cls.__name__
    folder = Path(path).expanduser()
    if folder.is_dir():
        where = folder / subfolder if subfolder else folder
        problem = (
            f"the folder has no {subfolder}/ subfolder"
            if not where.is_dir()
            else f"{where} lacks its config or weights ({first_line(exc)})"
        )
        return UserError(
            f"cannot load {what} from '{path}': {problem} (generator.path must be a diffusers-format "
            f"folder{f' with {subfolder}/ in it' if subfolder else ''}; fix or set generator.path)"
        )
    if str(path).startswith(("/", ".", "~")) or _mentions(exc, "HFValidationError"):
        return UserError(
            f"cannot load {what} from '{path}': no such folder, and not a hub id "
            "(set generator.path to a diffusers-format folder or a hub model id)"
        )
    if _mentions(exc, "RepositoryNotFoundError", "GatedRepoError"):
        problem = "not a local folder and not an accessible model on the Hugging Face hub"
    else:
        problem = "not a local folder and the Hugging Face hub is unreachable"
    return UserError(
        f"cannot load {what} from '{path}': {problem} (download it where there is network, e.g. "
        f"`hf download {path} --local-dir <dir>`, then set generator.path=<dir>)"
    )


@functools.lru_cache(maxsize=1)
def hub_offline(timeout_s: float = 3.0) -> bool:
    """HF_HUB_OFFLINE is set, or the hub's endpoint (HF_ENDPOINT) takes no TCP connection within
    ``timeout_s`` (asked once per process; DNS included, so a machine without it does not hang)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return True
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    reached = threading.Event()

    def probe():
        try:
            with socket.create_connection((url.hostname, port), timeout=timeout_s):
                reached.set()
        except OSError:
            pass

    threading.Thread(target=probe, daemon=True).start()
    if not reached.wait(timeout_s):
        log.warning(
            f"the Hugging Face hub ({constants.ENDPOINT}) cannot be reached: reading "
            "hub ids from the local hub cache only"
        )
        return True
    return False


def first_line(exc: BaseException | None) -> str:
    text = str(exc or "").strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _mentions(exc: BaseException | None, *names: str) -> bool:
    """Whether any exception in the cause/context chain has one of these class names."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__name__ in names:
            return True
        exc = exc.__cause__ or exc.__context__
    return False

"""Loading pretrained components from a hub id or a local folder, with one-line errors.

Where a model comes from (``resolve_model``, the one resolver): a local folder as given; a hub
id ``org/name`` from ``<model_dir>/org/name`` when that folder exists (``paths.model_dir``, else
``DD_MODEL_DIR``), so ``hf download org/name --local-dir <model_dir>/org/name`` once is enough;
else the hub (its local cache only when the hub is offline).

diffusers and transformers report a missing model as a multi-line OSError (or a ValueError for
paths that are not valid repo ids); the user needs to know which component is missing, whether
the path was read as a folder or a hub id, and which setting to change.
"""

from __future__ import annotations

import functools
import logging
import os
import re
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


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # org/name, as the hub spells repo ids


def resolve_model(path: str | Path, model_dir: str | Path | None = None) -> str:
    """Where to load ``path`` from: a local folder as given; a hub id from
    ``<model_dir>/<org>/<name>`` when that folder exists; else the hub id itself.
    ``model_dir`` None: ``DD_MODEL_DIR`` (unset: no local lookup)."""
    if Path(path).expanduser().is_dir() or not HUB_ID.fullmatch(str(path)):
        return str(path)
    local = model_folder(str(path), model_dir)
    return str(local) if local is not None and local.is_dir() else str(path)


def model_folder(hub_id: str, model_dir: str | Path | None = None) -> Path | None:
    """``<model_dir>/<org>/<name>``: where a downloaded hub model is looked for first."""
    model_dir = model_dir or os.environ.get("DD_MODEL_DIR")
    return Path(model_dir).expanduser() / hub_id if model_dir else None


def load_component(
    cls,
    path: str | Path,
    subfolder: str | None = None,
    *,
    setting: str = "generator.path",
    model_dir: str | Path | None = None,
    **kwargs,
):
    """``cls.from_pretrained(resolve_model(path), subfolder=subfolder, **kwargs)``, failing with
    a one-line UserError that names ``setting`` (the config key that gave ``path``).

    A hub id is read from the local hub cache only (no request) when the hub is offline, so an
    offline machine gets the one-line error at once instead of a minute of retries.
    """
    source = resolve_model(path, model_dir)
    if not Path(source).expanduser().is_dir() and hub_offline():
        kwargs.setdefault("local_files_only", True)
    try:
        return cls.from_pretrained(source, subfolder=subfolder, **kwargs)
    except (OSError, ValueError) as exc:  # EnvironmentError is OSError; HFValidationError a ValueError
        raise component_error(cls, source, subfolder, exc, setting, model_dir) from exc


def load_config(path: str | Path, subfolder: str, **kwargs) -> dict:
    """A diffusers component's ``config.json`` alone (its ``_class_name`` says which model class
    the folder holds), with ``load_component``'s resolution and one-line errors."""
    return load_component(ConfigJson, path, subfolder, **kwargs)


class ConfigJson:
    """``from_pretrained`` that reads only the config (any diffusers model class reads it alike)."""

    @staticmethod
    def from_pretrained(path: str, subfolder: str | None = None, **kwargs) -> dict:
        from diffusers import UNet2DModel

        return dict(UNet2DModel.load_config(path, subfolder=subfolder, **kwargs))


def component_error(
    cls,
    path: str | Path,
    subfolder: str | None,
    exc: BaseException | None = None,
    setting: str = "generator.path",
    model_dir: str | Path | None = None,
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
            f"cannot load {what} from '{path}': {problem} ({setting} must be a diffusers-format "
            f"folder{f' with {subfolder}/ in it' if subfolder else ''}; fix or set {setting})"
        )
    if str(path).startswith(("/", ".", "~")) or _mentions(exc, "HFValidationError"):
        return UserError(
            f"cannot load {what} from '{path}': no such folder, and not a hub id "
            f"(set {setting} to a diffusers-format folder or a hub model id)"
        )
    local = model_folder(str(path), model_dir)
    tried = f", not in {local}" if local is not None else ""
    if _mentions(exc, "RepositoryNotFoundError", "GatedRepoError"):
        problem = f"not a local folder{tried}, and not an accessible model on the Hugging Face hub"
    else:
        problem = f"not a local folder{tried}, and the Hugging Face hub is unreachable"
    fix = (
        f"`hf download {path} --local-dir {local}`, or set {setting}=<folder>"
        if local is not None
        else f"`hf download {path} --local-dir <dir>`, then set {setting}=<dir>"
    )
    return UserError(
        f"cannot load {what} from '{path}': {problem} (download it where there is network, e.g. {fix})"
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

"""CIFAR-10 and CIFAR-100 from the python-pickle folders
of https://www.cs.toronto.edu/~kriz/cifar.html."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ddcore.data.base import (
    ImageClassificationData,
    TensorSource,
    folder_safe,
    require_dir,
    resize_images,
    to_uint8,
)
from ddcore.errors import UserError

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
RESIZE_CHUNK = 5000  # images resized per step, so 50000 images at 224px never sit in float at once


def _hint(archive: str) -> str:
    return (
        f"download {archive} from {CIFAR_URL} and extract it under paths.data_dir, or set dataset.root=<dir>"
    )


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 pickles bytes at protocol <= 2 (latin-1 only)."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refused _codecs.encode(..., {encoding!r})")
    return text.encode("latin1")


def _numpy_core():
    return getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core to numpy._core


# The only globals a CIFAR pickle names: numpy arrays (Python 2's protocol 2 and Python 3's
# protocol 5) and Python 3's way of writing bytes. Dicts, lists, ints and bytes need none.
_ALLOWED = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_core().multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_core().multiarray._reconstruct,
    ("numpy.core.numeric", "_frombuffer"): lambda: _numpy_core().numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): lambda: _numpy_core().numeric._frombuffer,
    ("_codecs", "encode"): lambda: _latin1,
}


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, numbers, bytes and numpy arrays; any other global (a function a
    crafted file would call) is refused before it is looked up, so nothing in the file runs."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR file never does")
        return _ALLOWED[(module, name)]()


def _unpickle(path: Path, what: str, hint: str) -> dict:
    """One CIFAR pickle as a dict with bytes keys (the files were written by Python 2), read
    with ``_DataOnlyUnpickler``: a file that is not plain data is refused, never executed."""
    if not path.is_file():
        raise UserError(f"{what} file missing: {path} ({hint})")
    try:
        with open(path, "rb") as f:
            batch = _DataOnlyUnpickler(f, encoding="bytes").load()
    except OSError as exc:
        raise UserError(f"cannot read {what} file {path}: {exc.strerror or exc} ({hint})") from None
    except Exception as exc:  # noqa: BLE001  (any malformed pickle: truncated, crafted, other)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"{path} is not a {what} data file ({reason}); nothing in it was run "
            f"(replace it with the original: {hint})"
        ) from None
    if not isinstance(batch, dict):
        raise UserError(f"{path} is not a {what} pickle: it holds a {type(batch).__name__} ({hint})")
    return batch


def _field(batch: dict, key: bytes, path: Path, what: str, hint: str):
    if key not in batch:
        raise UserError(f"{path} is not a {what} pickle: no {key.decode()!r} entry ({hint})")
    return batch[key]


def _source(images: np.ndarray, labels: Sequence[int], resolution: int) -> TensorSource:
    """uint8 (N, 3072) rows -> TensorSource at ``resolution`` (resized in chunks if needed)."""
    images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)).view(-1, 3, 32, 32)
    if resolution != 32:
        images = torch.cat(
            [
                to_uint8(resize_images(chunk.float() / 255.0, resolution))
                for chunk in images.split(RESIZE_CHUNK)
            ]
        )
    return TensorSource(images, torch.as_tensor(np.asarray(labels), dtype=torch.long))


def _load_split(
    root: Path, files: Sequence[str], label_key: bytes, resolution: int, what: str, hint: str
) -> TensorSource:
    images, labels = [], []
    for name in files:
        batch = _unpickle(root / name, what, hint)
        data = _field(batch, b"data", root / name, what, hint)
        targets = _field(batch, label_key, root / name, what, hint)
        if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise UserError(
                f"{root / name} is not a {what} pickle: its data is not N rows of 3072 bytes ({hint})"
            )
        if not isinstance(targets, list) or len(targets) != len(data):
            raise UserError(f"{root / name} is not a {what} pickle: not one label per image ({hint})")
        images.append(data)
        labels.extend(targets)
    return _source(np.concatenate(images), labels, resolution)


def _class_names(root: Path, meta_file: str, key: bytes, what: str, hint: str) -> list[str]:
    meta = _unpickle(root / meta_file, what, hint)
    return [n.decode() for n in _field(meta, key, root / meta_file, what, hint)]


def _cifar(
    name: str,
    what: str,
    root: Path,
    classes: list[str],
    train: TensorSource,
    test: TensorSource,
    resolution: int,
) -> ImageClassificationData:
    readable = [c.replace("_", " ") for c in classes]  # cifar-100 has "aquarium_fish"
    return ImageClassificationData(
        name=name,
        class_ids=[folder_safe(c) for c in classes],
        class_names=readable,
        resolution=resolution,
        channels=3,
        train=train,
        test=test,
        prompts=[f"a photo of a {c}" for c in readable],
        description=f"{what} from {root}, {len(train)} train / {len(test)} test at {resolution}px",
    )


def cifar10(root: str, resolution: int = 32) -> ImageClassificationData:
    """CIFAR-10 from ``cifar-10-batches-py`` (data_batch_1..5, test_batch, batches.meta)."""
    what, hint = "CIFAR-10", _hint("cifar-10-python.tar.gz")
    root = require_dir(Path(root), "CIFAR-10 folder", hint)
    classes = _class_names(root, "batches.meta", b"label_names", what, hint)
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    train = _load_split(root, train_files, b"labels", resolution, what, hint)
    test = _load_split(root, ["test_batch"], b"labels", resolution, what, hint)
    return _cifar("cifar10", what, root, classes, train, test, resolution)


def cifar100(root: str, resolution: int = 32) -> ImageClassificationData:
    """CIFAR-100 (100 fine labels) from ``cifar-100-python`` (train, test, meta)."""
    what, hint = "CIFAR-100", _hint("cifar-100-python.tar.gz")
    root = require_dir(Path(root), "CIFAR-100 folder", hint)
    classes = _class_names(root, "meta", b"fine_label_names", what, hint)
    train = _load_split(root, ["train"], b"fine_labels", resolution, what, hint)
    test = _load_split(root, ["test"], b"fine_labels", resolution, what, hint)
    return _cifar("cifar100", what, root, classes, train, test, resolution)

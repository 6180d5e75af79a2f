"""A distilled set in memory, and its folder form: ``<class_id>/<i:06d>.png`` + ``manifest.json``.

The folder is written class by class (markers under ``.done/``; ``ddcore.class_writer``);
readers skip hidden entries, so any class-per-folder image set loads the same way.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ddcore.class_writer import read_markers
from ddcore.data.base import ImageClassificationData, as_float, load_files_uint8, to_uint8
from ddcore.errors import UserError
from ddcore.seeding import rng_for

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


@dataclass
class DistilledSet:
    """Images (n, C, R, R) with labels: uint8 as stored (sets read back from their PNGs, real
    subsets) or float in [0, 1] (fresh from a method); ``info`` holds per-image extras (mode ids).
    Consumers take floats per batch (``ddcore.data.base.as_float``): a set of ImageNet-1K at IPC
    50 and 224 px is 7.5 GB as uint8, 30 GB as float."""

    images: torch.Tensor
    labels: torch.Tensor
    info: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)  # e.g. {"seconds": wall time of distillation}

    def __len__(self) -> int:
        return len(self.labels)

    def per_class_counts(self, num_classes: int) -> list[int]:
        return torch.bincount(self.labels, minlength=num_classes).tolist()

    def digest(self, chunk: int = 256) -> str:
        """A digest of the set as stored (uint8 images, labels): equal for two methods that
        chose the same images, fresh or read back. Hashed ``chunk`` images at a time, so a float
        set is never copied whole."""
        digest = hashlib.sha256(self.labels.cpu().numpy().astype(np.int64).tobytes())
        for start in range(0, len(self.images), chunk):
            part = to_uint8(self.images[start : start + chunk].cpu()).contiguous()
            digest.update(part.numpy().tobytes())
        return digest.hexdigest()


def random_positions(data: ImageClassificationData, label: int, ipc: int, seed: int) -> torch.Tensor:
    """Positions, within class ``label``'s train images, of ``ipc`` drawn without replacement:
    the ``random`` baseline and the random-subset reference of the evaluation share this draw."""
    n = len(data.class_indices(label))
    return torch.randperm(n, generator=rng_for(seed, "random", label))[:ipc]


def random_real_subset(data: ImageClassificationData, ipc: int, seed: int) -> DistilledSet:
    """``ipc`` random real train images per class, in class order (``source_index`` per image),
    as uint8. ``random_real_indices`` gives the same indices without decoding anything."""
    indices = random_real_indices(data, ipc, seed)
    return DistilledSet(
        data.train.load_uint8(indices.tolist()),
        data.train.labels[indices],
        info={"source_index": indices.tolist()},
    )


def random_real_indices(data: ImageClassificationData, ipc: int, seed: int) -> torch.Tensor:
    """Train indices of ``random_real_subset``, in class order."""
    return torch.cat(
        [
            data.class_indices(label)[random_positions(data, label, ipc, seed)]
            for label in range(data.num_classes)
        ]
    )


def load_complete(out_dir: Path, data: ImageClassificationData) -> DistilledSet:
    """The set as its class markers list it: images read back from the PNGs as uint8 (the
    PNGs' own bytes), per-image info."""
    entries = [entry for marker in read_markers(out_dir, data).values() for entry in marker["images"]]
    paths = [Path(out_dir) / e["file"] for e in entries]
    keys = [k for k in (entries[0] if entries else {}) if k not in ("file", "label")]
    return DistilledSet(
        load_files_uint8(paths, data.resolution, data.channels),
        torch.as_tensor([e["label"] for e in entries], dtype=torch.long),
        info={k: [e.get(k) for e in entries] for k in keys},
    )


def load_distilled(folder: Path, data: ImageClassificationData) -> DistilledSet:
    """Read any class-per-folder image set; folder names must be the dataset's class ids. Classes
    come in the dataset's label order and files by name, as the run that wrote the set read it
    back (``load_complete``): ``task=evaluate`` on a run's folder trains on the same tensor."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"distilled folder not found: {folder} (give eval.distilled_dir=<folder>)")
    class_dirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    unknown = [p.name for p in class_dirs if p.name not in data.class_ids]
    if unknown:
        raise UserError(
            f"{folder}: class folders {unknown[:3]} are not classes of {data.name} "
            f"(expected names like {data.class_ids[:3]})"
        )
    paths, labels = [], []
    for label, class_dir in sorted((data.class_ids.index(p.name), p) for p in class_dirs):
        for path in sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            paths.append(path)
            labels.append(label)
    if not paths:
        raise UserError(f"{folder}: no images found (expected <class_id>/<name>.png files)")
    images = load_files_uint8(paths, data.resolution, data.channels)
    return DistilledSet(images, torch.as_tensor(labels, dtype=torch.long))


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def as_numpy_grid(images: torch.Tensor, rows: int) -> np.ndarray:
    """Tile (n, C, H, W) images into one (rows*H, cols*W, C) uint8 array, row-major."""
    n, c, h, w = images.shape
    cols = -(-n // rows)
    canvas = torch.ones(rows * cols, c, h, w)
    canvas[:n] = as_float(images)
    grid = canvas.view(rows, cols, c, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, cols * w, c)
    return to_uint8(grid).numpy()

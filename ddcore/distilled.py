"""A distilled set in memory, and its folder form: ``<class_id>/<i:06d>.png`` + ``manifest.json``."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddcore.data.base import ImageClassificationData, load_image_file, to_uint8
from ddcore.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


@dataclass
class DistilledSet:
    """Images (n, C, R, R) in [0, 1] with labels; ``info`` holds per-image extras (mode ids)."""

    images: torch.Tensor
    labels: torch.Tensor
    info: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)  # e.g. {"seconds": wall time of distillation}

    def __len__(self) -> int:
        return len(self.labels)

    def per_class_counts(self, num_classes: int) -> list[int]:
        return torch.bincount(self.labels, minlength=num_classes).tolist()


def _save_png(image01: torch.Tensor, path: Path) -> None:
    arr = to_uint8(image01).permute(1, 2, 0).numpy()
    Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(path)


def save_distilled(distilled: DistilledSet, data: ImageClassificationData, out_dir: Path,
                   manifest: dict) -> Path:
    """Write the set under ``out_dir`` atomically: build ``out_dir.tmp`` then rename it."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    files = []
    counters = [0] * data.num_classes
    for i, label in enumerate(distilled.labels.tolist()):
        class_dir = tmp / data.class_ids[label]
        class_dir.mkdir(parents=True, exist_ok=True)
        name = f"{counters[label]:06d}.png"
        counters[label] += 1
        _save_png(distilled.images[i], class_dir / name)
        files.append({"file": f"{data.class_ids[label]}/{name}", "label": label,
                      **{k: v[i] for k, v in distilled.info.items()}})
    manifest = {**manifest, "classes": data.class_ids, "class_names": data.class_names,
                "images": files}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def load_distilled(folder: Path, data: ImageClassificationData) -> DistilledSet:
    """Read any class-per-folder image set; folder names must be the dataset's class ids."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"distilled folder not found: {folder} (give eval.distilled_dir=<folder>)")
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir())
    unknown = [p.name for p in class_dirs if p.name not in data.class_ids]
    if unknown:
        raise UserError(f"{folder}: class folders {unknown[:3]} are not classes of {data.name} "
                        f"(expected names like {data.class_ids[:3]})")
    images, labels = [], []
    for class_dir in class_dirs:
        label = data.class_ids.index(class_dir.name)
        for path in sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            images.append(load_image_file(path, data.resolution, data.channels))
            labels.append(label)
    if not images:
        raise UserError(f"{folder}: no images found (expected <class_id>/<name>.png files)")
    return DistilledSet(torch.stack(images), torch.as_tensor(labels, dtype=torch.long))


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def as_numpy_grid(images: torch.Tensor, rows: int) -> np.ndarray:
    """Tile (n, C, H, W) images into one (rows*H, cols*W, C) uint8 array, row-major."""
    n, c, h, w = images.shape
    cols = -(-n // rows)
    canvas = torch.ones(rows * cols, c, h, w)
    canvas[:n] = images
    grid = canvas.view(rows, cols, c, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, cols * w, c)
    return to_uint8(grid).numpy()

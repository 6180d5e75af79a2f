"""Figures written under ``figures/`` of a run."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from ddcore.data.base import ImageClassificationData
from ddcore.distilled import DistilledSet, as_numpy_grid


def save_grid(distilled: DistilledSet, data: ImageClassificationData, path: Path,
              max_per_class: int = 10, min_cell: int = 48) -> Path:
    """One row per class (up to ``max_per_class`` images), cells upscaled to >= ``min_cell`` px."""
    rows = []
    for label in range(data.num_classes):
        images = distilled.images[distilled.labels == label][:max_per_class]
        pad = torch.ones(max_per_class - len(images), *distilled.images.shape[1:])
        rows.append(torch.cat([images, pad]))
    grid = torch.cat(rows)
    size = grid.shape[-1]
    if size < min_cell:
        grid = F.interpolate(grid, scale_factor=-(-min_cell // size), mode="nearest")
    grid = F.pad(grid, (1, 1, 1, 1), value=1.0)  # white separators
    array = as_numpy_grid(grid, rows=data.num_classes)
    image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path

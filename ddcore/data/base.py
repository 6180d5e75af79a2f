"""What every dataset provides: class names, a resolution, and train/test image sources.

Images always leave this module as float tensors in [0, 1], shape (n, C, R, R) at the dataset's
resolution R. Sources know their labels up front, so methods can pick the images of one class
without decoding the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ddcore.errors import UserError


class ImageSource(Protocol):
    labels: torch.Tensor  # (N,) int64, label index per image

    def __len__(self) -> int: ...

    def load(self, indices: Sequence[int]) -> torch.Tensor:
        """Images at ``indices`` as float (n, C, R, R) in [0, 1]."""
        ...


class TensorSource:
    """Images already in memory as uint8 (N, C, R, R): small datasets (digits, MNIST, CIFAR)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError("TensorSource expects uint8 images of shape (N, C, H, W)")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, indices: Sequence[int]) -> torch.Tensor:
        return self.images[torch.as_tensor(indices, dtype=torch.long)].float() / 255.0


def load_image_file(path: Path, resolution: int, channels: int) -> torch.Tensor:
    """Decode one file, resize the short side to ``resolution`` and center-crop a square."""
    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            w, h = im.size
            scale = resolution / min(w, h)
            im = im.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))),
                           Image.BICUBIC)
            w, h = im.size
            left, top = (w - resolution) // 2, (h - resolution) // 2
            im = im.crop((left, top, left + resolution, top + resolution))
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read image {path}: {exc} (remove or replace the file)") from exc
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0


class FileSource:
    """Images decoded from files on demand: ImageNet-scale folders that do not fit in memory."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], resolution: int, channels: int):
        self.paths = [Path(p) for p in paths]
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.resolution = resolution
        self.channels = channels

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, indices: Sequence[int]) -> torch.Tensor:
        return torch.stack([load_image_file(self.paths[i], self.resolution, self.channels)
                            for i in indices])


class SourceDataset(torch.utils.data.Dataset):
    """A torch Dataset view of a source, for DataLoaders (workers decode files in parallel)."""

    def __init__(self, source: ImageSource):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        return self.source.load([i])[0], self.source.labels[i]


def folder_safe(name: str) -> str:
    """A class name as a folder name: lower case, spaces and slashes to underscores."""
    return re.sub(r"[^0-9A-Za-z._-]+", "_", name.strip()).strip("_").lower() or "class"


@dataclass
class ImageClassificationData:
    """A labelled image dataset as the framework sees it.

    ``class_ids`` name the class folders of distilled sets (wnids for ImageNet subsets, safe names
    elsewhere); ``class_names`` are human readable; ``prompts`` feed text-conditioned generators.
    Label i is position i in these lists.
    """

    name: str
    class_ids: list[str]
    class_names: list[str]
    resolution: int
    channels: int
    train: ImageSource
    test: ImageSource
    prompts: list[str] = field(default_factory=list)
    hflip: bool = True  # whether horizontal flips keep the class (not for digits)
    description: str = ""

    def __post_init__(self):
        if not self.prompts:
            self.prompts = list(self.class_names)
        n = len(self.class_ids)
        if not (len(self.class_names) == len(self.prompts) == n):
            raise ValueError(f"{self.name}: class ids, names and prompts differ in length")

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    def class_indices(self, label: int, split: str = "train") -> torch.Tensor:
        source = self.train if split == "train" else self.test
        return torch.nonzero(source.labels == label).flatten()

    def check_ipc(self, ipc: int, why: str) -> None:
        """ipc must not exceed the smallest class when each sample needs its own real image."""
        counts = torch.bincount(self.train.labels, minlength=self.num_classes)
        smallest = int(counts.argmin())
        if ipc > int(counts[smallest]):
            raise UserError(f"ipc={ipc} exceeds the {int(counts[smallest])} train images of class "
                            f"{self.class_ids[smallest]!r} in {self.name} ({why}; use ipc <= "
                            f"{int(counts[smallest])})")

    def class_images(self, label: int, split: str = "train") -> torch.Tensor:
        source = self.train if split == "train" else self.test
        return source.load(self.class_indices(label, split).tolist())


def resize_images(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize a batch of [0, 1] images to a square resolution (antialiased when shrinking)."""
    if images.shape[-1] == resolution and images.shape[-2] == resolution:
        return images
    shrinking = images.shape[-1] > resolution
    out = F.interpolate(images, size=(resolution, resolution), mode="bilinear",
                        align_corners=False, antialias=shrinking)
    return out.clamp(0.0, 1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(0, 1) * 255.0).round().to(torch.uint8)


def require_dir(path: Path, what: str, hint: str) -> Path:
    """Fail with one line naming the folder looked for and how to provide it."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{what} not found: {path} ({hint})")
    return path

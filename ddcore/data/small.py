"""Datasets that ship with the machine: scikit-learn's digits and Fashion-MNIST (IDX files)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

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

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def _tensor_source(images01: torch.Tensor, labels: np.ndarray, resolution: int) -> TensorSource:
    return TensorSource(to_uint8(resize_images(images01, resolution)), torch.from_numpy(labels))


def digits(resolution: int = 16, test_fraction: float = 0.25, split_seed: int = 0) -> ImageClassificationData:
    """scikit-learn's 1797 8x8 digits, upsampled to ``resolution``; fixed stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]
    idx_train, idx_test = train_test_split(
        np.arange(len(images)), test_size=test_fraction, stratify=bunch.target, random_state=split_seed
    )
    names = [str(d) for d in range(10)]
    return ImageClassificationData(
        name="digits",
        class_ids=names,
        class_names=names,
        resolution=resolution,
        channels=1,
        train=_tensor_source(images[idx_train], bunch.target[idx_train], resolution),
        test=_tensor_source(images[idx_test], bunch.target[idx_test], resolution),
        prompts=[f"a handwritten digit {d}" for d in names],
        hflip=False,
        description=f"sklearn digits, {len(idx_train)} train / {len(idx_test)} test, "
        f"8x8 upsampled to {resolution}",
    )


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): the MNIST family's array format."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        zero, dtype_code, ndim = struct.unpack(">HBB", f.read(4))
        if zero != 0 or dtype_code != 0x08:
            raise ValueError(f"{path} is not an unsigned-byte IDX file")
        shape = struct.unpack(">" + "I" * ndim, f.read(4 * ndim))
        return np.frombuffer(f.read(), dtype=np.uint8).reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(root / f"{stem}.gz")


def fashion_mnist(
    root: str = "/usr/share/datasets/fashion-mnist", resolution: int = 28
) -> ImageClassificationData:
    """Fashion-MNIST from a folder of IDX files (the Debian package `dataset-fashion-mnist`)."""
    hint = "install it with `make data` (apt package dataset-fashion-mnist) or set dataset.root"
    root = require_dir(Path(root), "Fashion-MNIST folder", hint)
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        try:
            images = read_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte"))
            labels = read_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
        except FileNotFoundError as exc:
            from ddcore.errors import UserError

            raise UserError(f"Fashion-MNIST file missing: {exc.args[0]} ({hint})") from exc
        images01 = torch.from_numpy(images.copy()).float()[:, None] / 255.0
        splits[split] = _tensor_source(images01, labels, resolution)
    return ImageClassificationData(
        name="fashion_mnist",
        class_ids=[folder_safe(c) for c in FASHION_MNIST_CLASSES],
        class_names=FASHION_MNIST_CLASSES,
        resolution=resolution,
        channels=1,
        train=splits["train"],
        test=splits["test"],
        prompts=[f"a photo of a {c.lower()}" for c in FASHION_MNIST_CLASSES],
        hflip=True,
        description=f"Fashion-MNIST from {root}, 60000 train / 10000 test at {resolution}px",
    )

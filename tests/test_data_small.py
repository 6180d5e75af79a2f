"""Digits and Fashion-MNIST loaders, on the bundled data and on IDX fixtures made here."""

import gzip
import struct

import numpy as np
import pytest
import torch

from ddcore.data.small import digits, fashion_mnist, read_idx
from ddcore.errors import UserError


def test_digits_split_resolution_and_labels():
    data = digits()
    assert (len(data.train), len(data.test)) == (1347, 450)
    images = data.train.load([0, 1])
    assert images.shape == (2, 1, 16, 16) and images.dtype == torch.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert data.class_ids == [str(d) for d in range(10)] and not data.hflip
    assert all(len(data.class_indices(c)) >= 130 for c in range(10))


def write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_from_idx_folder(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 10)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    data = fashion_mnist(root=str(tmp_path))
    assert (len(data.train), len(data.test)) == (20, 10)
    assert data.class_ids[0] == "t-shirt_top" and data.train.labels[:3].tolist() == [0, 1, 2]
    raw = read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    assert torch.allclose(data.train.load([0])[0, 0] * 255, torch.from_numpy(raw[0]).float())


def test_fashion_mnist_missing_folder_and_file(tmp_path):
    with pytest.raises(UserError, match="Fashion-MNIST folder not found.*make data"):
        fashion_mnist(root=str(tmp_path / "absent"))
    with pytest.raises(UserError, match="train-images-idx3-ubyte"):
        fashion_mnist(root=str(tmp_path))

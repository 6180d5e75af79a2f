"""The data path of the protocols: train images held on the device as one uint8 tensor, batched
by index; test images decoded once and kept as uint8. Nothing is decoded per epoch unless a set is
larger than ``max_gb`` (then it is streamed through DataLoader workers).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ddcore.data.base import ImageSource, SourceDataset, TensorSource, as_float, to_uint8
from ddcore.errors import UserError

__all__ = ["TrainSet", "TestImages", "as_float", "preload", "test_loader"]
log = logging.getLogger(__name__)


def nbytes(source: ImageSource) -> int:
    """Bytes of the source as uint8 (one image decoded to learn its shape)."""
    if isinstance(source, TensorSource):
        return source.images.numel()
    return len(source) * source.load([0]).numel() if len(source) else 0


class SourceBatches:
    """Collate function loading whole batches of indices from an ImageSource (picklable). A file
    that cannot be read comes back as its one-line error, raised by ``decoded`` in the main
    process (a DataLoader worker would re-raise it with a traceback folded into the message)."""

    def __init__(self, source: ImageSource, errors_as_values: bool = True):
        self.source, self.errors_as_values = source, errors_as_values

    def __call__(self, indices: list[int]):
        try:
            return self.source.load_uint8(indices), self.source.labels[indices]
        except UserError as exc:
            if not self.errors_as_values:  # batches handed to Lightning as they come
                raise
            return str(exc)


def decoded(loader):
    """The (uint8 images, labels) batches of a ``SourceBatches`` loader; an unreadable file
    raises its one-line UserError here."""
    for batch in loader:
        if isinstance(batch, str):
            raise UserError(batch)
        yield batch


def preload(source: ImageSource, num_workers: int = 0, batch_size: int = 256) -> torch.Tensor:
    """All images of a source as one uint8 tensor, decoded once (in parallel workers) batch by
    batch into a tensor allocated up front: the peak is the split plus one batch, not twice the
    split as a list joined by ``torch.cat`` would be (ImageNet val at 224 px: 7.5 GB)."""
    if isinstance(source, TensorSource):
        return source.images
    loader = torch.utils.data.DataLoader(
        list(range(len(source))),
        batch_size=batch_size,
        collate_fn=SourceBatches(source),
        num_workers=num_workers,
    )
    out = None
    for start, (images, _) in zip(range(0, len(source), batch_size), decoded(loader)):
        if out is None:
            out = torch.empty(len(source), *images.shape[1:], dtype=torch.uint8)
        out[start : start + len(images)] = images
    return out if out is not None else torch.empty(0, dtype=torch.uint8)


def check_decodable(source: ImageSource, rank: int = 0, world_size: int = 1, num_workers: int = 0) -> None:
    """Decode this rank's share of a file source (every ``world_size``-th image) and keep none
    of it: an unreadable file fails before hours of distillation, and no rank holds a split it
    may never test on (a rank decodes the whole split only when it trains a student)."""
    if isinstance(source, TensorSource):
        return
    mine = list(range(rank, len(source), world_size))
    loader = torch.utils.data.DataLoader(
        mine, batch_size=64, collate_fn=SourceBatches(source), num_workers=num_workers
    )
    for _ in decoded(loader):
        pass


@dataclass
class TrainSet:
    """Images as uint8 (n, C, R, R) with labels, held by the module on its device; or, when too
    large to hold, a source streamed through a DataLoader each epoch."""

    images: torch.Tensor | None
    labels: torch.Tensor
    source: ImageSource | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_images(cls, images: torch.Tensor, labels: torch.Tensor) -> "TrainSet":
        """A distilled set: float [0, 1] images are quantized to uint8, exactly as its PNGs."""
        images = images.detach().cpu()
        return cls(images if images.dtype == torch.uint8 else to_uint8(images), labels.cpu().long())

    @classmethod
    def from_source(cls, source: ImageSource, max_gb: float, num_workers: int = 0) -> "TrainSet":
        size = nbytes(source)
        if size <= max_gb * 2**30:
            return cls(preload(source, num_workers), source.labels.long())
        log.info(f"train set of {size / 2**30:.1f} GB > max_bank_gb={max_gb}: streamed from files")
        return cls(None, source.labels.long(), source)

    def loader(self, batch_size: int, seed: int, num_workers: int = 0):
        """Shuffled batches of indices into the held tensor, or of decoded (images, labels)."""
        rng = torch.Generator().manual_seed(seed % (2**63))
        if self.images is not None:
            return torch.utils.data.DataLoader(
                torch.arange(len(self)), batch_size=batch_size, shuffle=True, generator=rng
            )
        return torch.utils.data.DataLoader(
            SourceDataset(self.source),
            batch_size=batch_size,
            shuffle=True,
            generator=rng,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
        )


def test_loader(images: torch.Tensor | None, source: ImageSource, batch_size: int, num_workers: int = 0):
    """Batches of the test split: from the preloaded uint8 tensor, else decoded from the source."""
    if images is not None:
        dataset = torch.utils.data.TensorDataset(images, source.labels)
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    return torch.utils.data.DataLoader(
        list(range(len(source))),
        batch_size=batch_size,
        collate_fn=SourceBatches(source, errors_as_values=False),
        num_workers=num_workers,
    )


class TestImages:
    """Preloads each test split once (when it fits in ``max_gb``) and shares it across repeats."""

    def __init__(self, max_gb: float, num_workers: int = 0):
        self.max_gb, self.num_workers = max_gb, num_workers
        self._cache: dict[int, torch.Tensor | None] = {}

    def loader(self, source: ImageSource, batch_size: int):
        key = id(source)
        if key not in self._cache:
            fits = nbytes(source) <= self.max_gb * 2**30
            self._cache[key] = preload(source, self.num_workers) if fits else None
        return test_loader(self._cache[key], source, batch_size, self.num_workers)

    def __getstate__(self):  # worker processes preload for themselves
        return {"max_gb": self.max_gb, "num_workers": self.num_workers, "_cache": {}}

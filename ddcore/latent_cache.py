"""Per-class latents of a dataset's train images, encoded once and cached on disk.

Encoding every train image through a VAE is the slow part of mode discovery at ImageNet scale,
and every method and sweep job that works in latent space needs the same latents. They are
stored as ``<root>/<dataset>-<generator>-<key>/<label>-<class digest>.pt``, where ``key`` hashes

- the dataset's identity: name, description, class ids, resolution;
- the encoder's identity: generator name, codec type, encode resolution, preprocessing (short
  side resized to the generator resolution, center crop, [-1, 1], as the official code prepares
  images for the VAE), latent shape, scaling factor, the precision it encodes in
  (``encode_precision``: always outside autocast, so ``sample_precision=bf16`` runs and fp32 runs
  compute and share the same latents, as the official code encodes in fp32) and a hash of the
  codec's weights (its ``state_dict``; empty for pixel-space generators);

and the class digest is the content digest of the class's train images (file paths, sizes and
modification times for image folders, the pixel bytes for in-memory sets). A change to any of
these gives a new file name, so stale latents are never read. Files are written to a
temporary name and renamed, so an interrupted job leaves no half-written file.
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from pathlib import Path

import torch

from ddcore.data.base import ImageClassificationData, SourceDataset, folder_safe
from ddcore.files import atomic_write, short_hash
from ddcore.sharding import full_precision

log = logging.getLogger(__name__)
FORMAT = 3  # bump when the way latents are computed changes (3: never under bf16 autocast)
# Images per encoder call. The VAE's activations, not the latents, bound memory: the
# sd-vae-ft-mse encoder's peak grows by about 0.19 GB of fp32 activations per 256 px image
# (measured on CPU), so 64 images took ~12 GB beside the denoiser; 16 keep it near 3 GB.
ENCODE_BATCH = 16
PREPROCESS = "short-side resize to the generator resolution, center crop, [-1, 1]"
_weight_hashes: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()


def state_dict_hash(module: torch.nn.Module) -> str:
    """sha256 over names, dtypes, shapes and bytes of a module's state_dict (memoised)."""
    if module in _weight_hashes:
        return _weight_hashes[module]
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    _weight_hashes[module] = digest.hexdigest()
    return _weight_hashes[module]


def dataset_identity(data: ImageClassificationData) -> dict:
    return {
        "name": data.name,
        "description": data.description,
        "class_ids": list(data.class_ids),
        "resolution": data.resolution,
    }


def generator_identity(generator) -> dict:
    codec = generator.codec
    return {
        "name": generator.name,
        "codec": type(codec).__name__,
        "resolution": generator.resolution,
        "preprocess": PREPROCESS,
        "latent_shape": list(generator.latent_shape),
        "scaling_factor": getattr(codec, "scaling_factor", None),
        "encode_precision": encode_precision(generator),
        "weights": state_dict_hash(codec),
    }


def encode_precision(generator) -> str:
    """The precision ``encode_class`` computes in: the generator's weights dtype, as it encodes
    with autocast off (``ddcore.sharding.full_precision``)."""
    return str(generator.dtype).removeprefix("torch.")


def cache_key(data: ImageClassificationData, generator) -> str:
    return short_hash(
        {"format": FORMAT, "dataset": dataset_identity(data), "generator": generator_identity(generator)}
    )


def encode_class(
    generator,
    data: ImageClassificationData,
    label: int,
    batch_size: int = ENCODE_BATCH,
    workers: int = 0,
) -> torch.Tensor:
    """Latents of every train image of one class, decoded straight at the generator resolution
    (image folders: short side resized, center crop), then through the generator's encoder.

    Streams: ``batch_size`` images are decoded, then encoded, at a time, so a class (1300
    ImageNet images) is never held as pixels or activations at once. ``workers`` > 0 decodes
    files in DataLoader worker processes while the encoder runs (the ImageNet-scale cost); 0
    decodes in this process. Autocast is off (``encode_precision``).
    """
    indices = data.class_indices(label, "train").tolist()
    loader = torch.utils.data.DataLoader(
        SourceDataset(data.train, indices, generator.resolution),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=generator.device.type == "cuda",
    )
    with full_precision(generator.device):
        return torch.cat([generator.encode(images, batch_size) for images, _ in loader])


class LatentCache:
    """``class_latents(generator, data, label)``, read from ``root`` when cached there.

    Args:
        root: cache folder; None computes latents every time and writes nothing.
        batch_size, workers: see ``encode_class``.
    """

    def __init__(self, root: str | Path | None, batch_size: int = ENCODE_BATCH, workers: int = 0):
        self.root = Path(root) if root else None
        self.batch_size, self.workers = int(batch_size), int(workers)

    @classmethod
    def from_settings(
        cls, enabled: bool, root: str | None, batch_size: int = ENCODE_BATCH, workers: int = 0
    ) -> "LatentCache":
        """The cache a method's ``latent_cache*`` settings describe."""
        return cls(root if enabled else None, batch_size, workers)

    def folder(self, generator, data: ImageClassificationData) -> Path:
        name = f"{folder_safe(data.name)}-{folder_safe(generator.name)}-{cache_key(data, generator)}"
        return self.root / name

    def class_latents(self, generator, data: ImageClassificationData, label: int) -> torch.Tensor:
        if self.root is None:
            return encode_class(generator, data, label, self.batch_size, self.workers)
        path = self.folder(generator, data) / f"{label}-{data.class_digest(label)[:16]}.pt"
        latents = self._read(path)
        if latents is None:
            latents = encode_class(generator, data, label, self.batch_size, self.workers).float()
            self._write(latents.cpu(), path)
        return latents.to(generator.device)

    @staticmethod
    def _read(path: Path) -> torch.Tensor | None:
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file: recompute it
            log.warning(f"ignoring unreadable latent cache file {path}: {exc}")
            return None

    @staticmethod
    def _write(latents: torch.Tensor, path: Path) -> None:
        atomic_write(path, lambda tmp: torch.save(latents.contiguous(), tmp))

"""What every dataset provides: class names, a resolution, and train/test image sources.

Images leave this module as float tensors in [0, 1] (``load``) or as uint8 (``load_uint8``, a
quarter of the memory: what sets of ImageNet size are held as), shape (n, C, R, R) at the
dataset's resolution R. Sources know their labels up front, so methods can pick the images of one class
without decoding the rest.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass, field, replace
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

    def load(self, indices: Sequence[int], resolution: int | None = None) -> torch.Tensor:
        """Images at ``indices`` as float (n, C, R, R) in [0, 1]; ``resolution`` overrides R
        (files are decoded at it, so nothing is shrunk first and upsampled later)."""
        ...

    def load_uint8(self, indices: Sequence[int], resolution: int | None = None) -> torch.Tensor:
        """The same images as uint8 (n, C, R, R), decoded straight into one tensor: a quarter of
        the float memory, and no list of per-image tensors (sets of ImageNet size)."""
        ...

    def digest(self, indices: Sequence[int]) -> str:
        """A content digest of the images at ``indices``: it changes when any of them does."""
        ...

    def subset(self, indices: Sequence[int]) -> ImageSource:
        """A source of the images at ``indices`` only (``hold_out_validation``)."""
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

    def load(self, indices: Sequence[int], resolution: int | None = None) -> torch.Tensor:
        images = self.images[torch.as_tensor(indices, dtype=torch.long)].float() / 255.0
        return images if resolution is None else resize_images(images, resolution)

    def load_uint8(self, indices: Sequence[int], resolution: int | None = None) -> torch.Tensor:
        if resolution is not None and resolution != self.images.shape[-1]:
            return to_uint8(self.load(indices, resolution))
        return self.images[torch.as_tensor(list(indices), dtype=torch.long)]

    def digest(self, indices: Sequence[int]) -> str:
        pick = self.images[torch.as_tensor(list(indices), dtype=torch.long)].contiguous()
        return hashlib.sha256(pick.numpy().tobytes()).hexdigest()

    def subset(self, indices: Sequence[int]) -> TensorSource:
        pick = torch.as_tensor(list(indices), dtype=torch.long)
        return TensorSource(self.images[pick], self.labels[pick])


# Modes PIL's convert("L") would clip to 0..255 instead of scaling: decoded as float planes.
HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def resize_crop(im: Image.Image, resolution: int) -> Image.Image:
    """Resize the short side to ``resolution`` (bicubic), then center-crop a square."""
    w, h = im.size
    scale = resolution / min(w, h)
    im = im.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))), Image.BICUBIC)
    w, h = im.size
    left, top = (w - resolution) // 2, (h - resolution) // 2
    return im.crop((left, top, left + resolution, top + resolution))


def high_depth_plane(im: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float image as one float plane in [0, 1] (mode F).

    Integer images are scaled by 65535 (16-bit PNG/TIFF); float images are taken as [0, 1]
    when they fit it, else as 0..255 or 0..65535 by their maximum.
    """
    arr = np.asarray(im, dtype=np.float32)
    top = float(arr.max()) if arr.size else 0.0
    if im.mode == "F":
        scale = 1.0 if top <= 1.0 else 255.0 if top <= 255.0 else 65535.0
    else:
        scale = 65535.0
    return Image.fromarray(np.clip(arr / scale, 0.0, 1.0).astype(np.float32), mode="F")


def decode_uint8(im: Image.Image, resolution: int, channels: int) -> np.ndarray:
    """(R, R, C) uint8 from any PIL mode (L, LA, P, RGB(A), CMYK, 1, I;16, I, F); alpha is
    dropped, grayscale is repeated for RGB sets; 16-bit and float images are scaled to 0..255."""
    if im.mode in HIGH_DEPTH_MODES:
        return to_uint8(torch.from_numpy(decode_image(im, resolution, channels))).numpy()
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # palette transparency: decode through RGBA, as PIL advises
    im = resize_crop(im.convert("L" if channels == 1 else "RGB"), resolution)
    arr = np.array(im, dtype=np.uint8)  # a writable copy: PIL's buffer is read-only
    return arr[:, :, None] if arr.ndim == 2 else arr


def decode_image(im: Image.Image, resolution: int, channels: int) -> np.ndarray:
    """(R, R, C) float32 in [0, 1], as ``decode_uint8``; 16-bit and float images keep their
    precision (decoded as float planes)."""
    if im.mode in HIGH_DEPTH_MODES:
        plane = np.asarray(resize_crop(high_depth_plane(im), resolution), dtype=np.float32)
        arr = np.clip(plane, 0.0, 1.0)[:, :, None]
        return np.repeat(arr, channels, axis=2) if channels == 3 else arr
    return decode_uint8(im, resolution, channels).astype(np.float32) / 255.0


# Images over this many pixels are refused before they are decoded: PIL's own decompression-bomb
# threshold (twice Image.MAX_IMAGE_PIXELS, 178,956,970 pixels, ~0.5 GB as RGB). A folder dataset's
# ``max_pixels`` (``dataset.max_pixels``; null = no limit) moves it either way.
MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS


def too_large(path: Path, pixels: str, max_pixels) -> UserError:
    return UserError(
        f"image {path} has {pixels} pixels, over the limit of {max_pixels:,} (dataset.max_pixels; a "
        "decompression-bomb guard): shrink or remove the file, or raise dataset.max_pixels"
    )


def open_image(path: Path, max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """``Image.open`` (lazy: the header only) with ``max_pixels`` in place of PIL's limit."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit is ours
        try:
            im = Image.open(path)
        except Image.DecompressionBombError as exc:
            if max_pixels is not None and max_pixels <= MAX_PIXELS:
                found = re.search(r"\d+", str(exc))  # "Image size (N pixels) exceeds limit ..."
                raise too_large(
                    path, f"{int(found.group()):,}" if found else "too many", max_pixels
                ) from None
            im = _open_beyond_pil_limit(path)
    if max_pixels is not None and im.width * im.height > max_pixels:
        im.close()
        raise too_large(path, f"{im.width}x{im.height} = {im.width * im.height:,}", max_pixels)
    return im


def _open_beyond_pil_limit(path: Path) -> Image.Image:
    """``Image.open`` with PIL's check lifted (only when ``max_pixels`` asks for more than PIL
    allows; PIL reads the limit from a module global, restored at once)."""
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        return Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def load_image_file(
    path: Path, resolution: int, channels: int, uint8: bool = False, max_pixels: int | None = MAX_PIXELS
) -> torch.Tensor:
    """Decode one file, resize the short side to ``resolution`` and center-crop a square:
    (C, R, R) float in [0, 1], or uint8 with ``uint8``. A file over ``max_pixels`` pixels (None:
    no limit) is refused before it is decoded; every failure is one ``UserError`` line naming it."""
    try:
        with open_image(path, max_pixels) as im:
            arr = (decode_uint8 if uint8 else decode_image)(im, resolution, channels)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"cannot read image {path}: {exc} (remove or replace the file)") from exc
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()


def load_files_uint8(
    paths: Sequence[Path], resolution: int, channels: int, max_pixels: int | None = MAX_PIXELS
) -> torch.Tensor:
    """Files decoded one by one into a single preallocated uint8 (n, C, R, R) tensor."""
    out = torch.empty(len(paths), channels, resolution, resolution, dtype=torch.uint8)
    for row, path in enumerate(paths):
        out[row] = load_image_file(path, resolution, channels, uint8=True, max_pixels=max_pixels)
    return out


class FileSource:
    """Images decoded from files on demand: ImageNet-scale folders that do not fit in memory.
    ``max_pixels``: files over it are refused before decoding (None: no limit)."""

    def __init__(
        self,
        paths: Sequence[Path],
        labels: Sequence[int],
        resolution: int,
        channels: int,
        max_pixels: int | None = MAX_PIXELS,
    ):
        self.paths = [Path(p) for p in paths]
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.resolution = resolution
        self.channels = channels
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, indices: Sequence[int], resolution: int | None = None) -> torch.Tensor:
        size, channels = resolution or self.resolution, self.channels
        return torch.stack(
            [load_image_file(self.paths[i], size, channels, max_pixels=self.max_pixels) for i in indices]
        )

    def load_uint8(self, indices: Sequence[int], resolution: int | None = None) -> torch.Tensor:
        paths = [self.paths[i] for i in indices]
        return load_files_uint8(paths, resolution or self.resolution, self.channels, self.max_pixels)

    def digest(self, indices: Sequence[int]) -> str:
        """Path, size and modification time of each file (cheap: no decoding). Names are taken
        as the bytes on disk (``os.fsencode``), so one that is not UTF-8 hashes too."""
        digest = hashlib.sha256()
        for i in indices:
            stat = self.paths[i].stat()
            digest.update(os.fsencode(self.paths[i]) + f":{stat.st_size}:{stat.st_mtime_ns};".encode())
        return digest.hexdigest()

    def subset(self, indices: Sequence[int]) -> FileSource:
        pick = list(indices)
        return FileSource(
            [self.paths[i] for i in pick],
            self.labels[pick].tolist(),
            self.resolution,
            self.channels,
            self.max_pixels,
        )


class SourceDataset(torch.utils.data.Dataset):
    """A torch Dataset view of a source, for DataLoaders (workers decode files in parallel):
    all its images, or those at ``indices``, at ``resolution`` (default: the source's)."""

    def __init__(
        self, source: ImageSource, indices: Sequence[int] | None = None, resolution: int | None = None
    ):
        self.source = source
        self.indices = list(range(len(source))) if indices is None else list(indices)
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        index = self.indices[i]
        return self.source.load([index], self.resolution)[0], self.source.labels[index]


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
            raise UserError(
                f"ipc={ipc} exceeds the {int(counts[smallest])} train images of class "
                f"{self.class_ids[smallest]!r} in {self.name} ({why}; use ipc <= "
                f"{int(counts[smallest])})"
            )

    def class_images(self, label: int, split: str = "train", resolution: int | None = None) -> torch.Tensor:
        source = self.train if split == "train" else self.test
        return source.load(self.class_indices(label, split).tolist(), resolution)

    def class_digest(self, label: int, split: str = "train") -> str:
        """Content digest of one class's images (see ``ImageSource.digest``)."""
        source = self.train if split == "train" else self.test
        return source.digest(self.class_indices(label, split).tolist())


def hold_out_validation(
    data: ImageClassificationData, fraction: float, seed: int = 0
) -> ImageClassificationData:
    """The dataset with a validation split in place of its test split: ``fraction`` of each
    class's train images (at least one, never all; drawn with ``seed``) become the test split,
    and the train split keeps the rest. Choosing a setting on it keeps the test split unseen
    until the chosen setting is reported there."""
    if not 0.0 < fraction < 1.0:
        raise UserError(f"validation.fraction={fraction} must lie strictly between 0 and 1 (e.g. 0.1)")
    rng = torch.Generator().manual_seed(int(seed))
    keep, held = [], []
    for label in range(data.num_classes):
        idx = data.class_indices(label)
        if len(idx) < 2:
            raise UserError(
                f"class {data.class_ids[label]!r} of {data.name} has {len(idx)} train image(s): a validation "
                "split needs 2 or more per class (set score_on=test)"
            )
        idx = idx[torch.randperm(len(idx), generator=rng)]
        n = min(len(idx) - 1, max(1, round(fraction * len(idx))))
        held.append(idx[:n])
        keep.append(idx[n:])
    keep, held = torch.cat(keep).sort().values.tolist(), torch.cat(held).sort().values.tolist()
    return replace(
        data,
        train=data.train.subset(keep),
        test=data.train.subset(held),
        description=f"{data.description or data.name}; validation: {len(held)} of the train images held out "
        f"({fraction:g} per class, seed {seed}), students tested on them, not on the test split",
    )


def resize_images(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize a batch of [0, 1] images to a square resolution (antialiased when shrinking)."""
    if images.shape[-1] == resolution and images.shape[-2] == resolution:
        return images
    shrinking = images.shape[-1] > resolution
    out = F.interpolate(
        images, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=shrinking
    )
    return out.clamp(0.0, 1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> uint8 (rounded); uint8 images pass through."""
    if images.dtype == torch.uint8:
        return images
    return (images.float().clamp(0, 1) * 255.0).round().to(torch.uint8)


def as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [0, 1] (a new tensor); float images pass through."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


def require_dir(path: Path, what: str, hint: str) -> Path:
    """Fail with one line naming the folder looked for and how to provide it."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{what} not found: {path} ({hint})")
    return path

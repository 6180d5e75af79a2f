"""``method=rded``: RDED (Sun et al., CVPR 2024; official code LINs-lab/RDED; docs/rded.md).

Per class: ``num_crop`` square random-resized crops (area ``scale`` of the image, side
resolution / factor) of each of ``mipc`` real images are scored by a frozen observer: its
cross-entropy on the true class, each crop zero-padded (not resized) to full size in the
observer's normalized input, as the official ``selector`` does. The lowest-loss crop of each
image is kept; the ``ipc * factor**2`` lowest-loss kept crops of the class are stitched
``factor x factor`` per image, grid slot k (row-major) taking ranks ``[k*ipc, (k+1)*ipc)``: the
top-left slot of every image holds the best-ranked patches (the official ``mix_images``).

Observer (``observer``): ``teacher`` = the soft-label protocol's teacher (``eval.teacher``: its
cache, trained there if missing), or a folder holding a timm/torchvision classifier, read by
``task=check_generator``'s loader with ``observer_space`` (``imagenet1k``: the class's output is
the ImageNet-1k index of its wnid; ``dataset``: output = label). Both arrive as objects built
by the application from the config (``conf/method/rded.yaml``): methods do not import ``eval/``
or ``ddapp/``, and neither loader is copied here. The cross-entropy is taken over the outputs
of the dataset's classes, as the official code prunes its classifier to them.

Per-crop boxes and losses of every scored image are cached per class (``patchsel``'s
``ScoreCache``: observer weights hash, crop settings and seed in the folder key; the class's
image digest and output index in the file key), so another IPC selects without the observer.
"""

from __future__ import annotations

import logging
import math
import time

import torch
import torch.nn.functional as F

from baselines.observer import Observer, ObserverSource, auto_or_int
from ddcore.data.base import ImageClassificationData, resize_images
from ddcore.errors import UserError
from ddcore.method import MethodBase
from ddcore.progress import RateLog
from ddcore.seeding import rng_for
from patchsel.score_cache import ScoreCache

log = logging.getLogger(__name__)
LOW_RES_MAX = 64  # factor=auto: 1 up to 64 px (CIFAR, Tiny-ImageNet, digits), 2 above (ImageNet subsets)


# -- geometry (pure functions: tested on hand-made inputs) ----------------------------------------
def crop_boxes(rng: torch.Generator, side: int, num_crop: int, scale: tuple[float, float]) -> torch.Tensor:
    """(num_crop, 3) long boxes (top, left, size) of square random-resized crops of a side x side
    image: torchvision's RandomResizedCrop with ratio (1, 1), whose first try always fits a square."""
    boxes = []
    for _ in range(num_crop):
        area = side * side * float(torch.empty(1).uniform_(scale[0], scale[1], generator=rng))
        size = min(side, max(1, round(math.sqrt(area))))
        top = int(torch.randint(0, side - size + 1, (1,), generator=rng))
        left = int(torch.randint(0, side - size + 1, (1,), generator=rng))
        boxes.append((top, left, size))
    return torch.tensor(boxes, dtype=torch.long)


def cut(images: torch.Tensor, boxes: torch.Tensor, side: int) -> torch.Tensor:
    """Crops (n, C, side, side): image i's box i (top, left, size), resized to ``side``."""
    return torch.cat(
        [
            resize_images(img[None, :, t : t + s, left : left + s], side)
            for img, (t, left, s) in zip(images, boxes.tolist())
        ]
    )


def pad_center(crops: torch.Tensor, size: int, fill: torch.Tensor) -> torch.Tensor:
    """Crops centered on a size x size canvas of ``fill`` (per channel), as the official ``pad``
    (top/left get the smaller half of the margin)."""
    n, c, h, w = crops.shape
    canvas = fill.to(crops).view(1, c, 1, 1).expand(n, c, size, size).clone()
    top, left = (size - h) // 2, (size - w) // 2
    canvas[:, :, top : top + h, left : left + w] = crops
    return canvas


def keep_best(losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, loss) of the lowest-loss crop of each image, for losses (n_images, num_crop)."""
    loss, index = losses.min(dim=1)
    return index, loss


def rank(kept: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the k lowest kept losses, best first (ties in candidate order)."""
    return torch.sort(kept, stable=True).indices[:k]


def stitch(patches: torch.Tensor, factor: int, ipc: int, resolution: int) -> torch.Tensor:
    """(ipc, C, R, R) images from ``ipc * factor**2`` patches in rank order: grid slot k (row-major)
    of image i holds patch ``k * ipc + i``; with R % factor = r, the first r rows and columns
    are one pixel wider (the official ``mix_images``, nearest-neighbour resize)."""
    if len(patches) != ipc * factor * factor:
        raise ValueError(f"stitching {ipc} images of {factor}x{factor} needs {ipc * factor**2} patches")
    base, extra = divmod(resolution, factor)
    sizes = [base + 1 if i < extra else base for i in range(factor)]
    starts = [sum(sizes[:i]) for i in range(factor)]
    out = torch.zeros(ipc, patches.shape[1], resolution, resolution, dtype=patches.dtype)
    for k in range(factor * factor):
        row, col = divmod(k, factor)
        part = patches[k * ipc : (k + 1) * ipc]
        if part.shape[-2:] != (sizes[row], sizes[col]):
            part = F.interpolate(part, size=(sizes[row], sizes[col]), mode="nearest")
        out[:, :, starts[row] : starts[row] + sizes[row], starts[col] : starts[col] + sizes[col]] = part
    return out


# the observer (a frozen classifier, its loading and device): baselines/observer.py


# -- the method -------------------------------------------------------------------------------------
class RDED(MethodBase):
    """Args:
    observer: ``teacher`` or a folder with a timm/torchvision classifier.
    observer_space, observer_arch: for folder observers (see the module docstring).
    mipc: real images scored per class (a seeded random subset; all of a smaller class).
    num_crop: random crops per image; the lowest-loss one is kept.
    factor: patches per side of a distilled image: ``auto`` (1 up to 64 px, 2 above) or >= 1.
    scale: area range of the random-resized crops.
    batch_size: crops per observer forward pass.
    score_cache, score_cache_dir: keep per-crop boxes and losses on disk (None: this run only).
    teacher: the ``eval.teacher`` object (duck-typed ``get(data, trainer, train_if_missing)``).
    classifier: loader ``(folder, settings, data) -> classifier`` (``ddapp.check_generator``).
    trainer: Lightning trainer factory, to train a missing teacher; its accelerator places the
        observer.
    """

    name = "rded"

    def __init__(
        self,
        *,
        observer: str,
        observer_space: str,
        observer_arch: str | None,
        mipc: int,
        num_crop: int,
        factor: str | int,
        scale: tuple[float, float],
        batch_size: int,
        score_cache: bool,
        score_cache_dir: str | None,
        teacher=None,
        classifier=None,
        trainer=None,
    ):
        """Settings and their defaults: ``ddapp.schemas.RDEDSchema``; their ranges are checked
        with the config (``ddapp.config_checks.RULES``)."""
        self.source = ObserverSource(
            self.name, observer, observer_space, observer_arch, teacher, classifier, trainer
        )
        self.factor = auto_or_int(factor)
        self.mipc, self.num_crop, self.batch_size = int(mipc), int(num_crop), int(batch_size)
        self.scale = tuple(float(s) for s in scale)
        self.score_cache_dir = score_cache_dir if score_cache else None
        self.teacher = teacher
        self._cache: ScoreCache | None = None
        self.timings = {"score_seconds": 0.0, "scored_images": 0, "observer_calls": 0}

    # -- settings -----------------------------------------------------------------------------
    def factor_for(self, data: ImageClassificationData) -> int:
        if self.factor == "auto":
            return 1 if data.resolution <= LOW_RES_MAX else 2
        return self.factor

    def candidates_per_class(self, data: ImageClassificationData) -> int:
        smallest = int(torch.bincount(data.train.labels, minlength=data.num_classes).min())
        return min(self.mipc, smallest)

    def settings(self, data: ImageClassificationData, seed: int) -> dict:
        """What a class's per-crop boxes and losses depend on besides the observer and the images."""
        return {
            "resolution": data.resolution,
            "channels": data.channels,
            "side": data.resolution // self.factor_for(data),
            "num_crop": self.num_crop,
            "scale": list(self.scale),
            "pad": "center, normalized zero",
            "seed": seed,
        }

    # -- checks before any work ---------------------------------------------------------------------
    def validate(self, data: ImageClassificationData, ipc: int) -> None:
        factor = self.factor_for(data)
        if data.resolution // factor < 1:
            raise UserError(
                f"method.factor={factor} exceeds the {data.resolution} px resolution of {data.name}"
            )
        need, have = ipc * factor * factor, self.candidates_per_class(data)
        if need > have:
            raise UserError(
                f"ipc={ipc} with method.factor={factor} stitches ipc x factor^2 = {need} crops per "
                f"class but only {have} are candidates (one kept crop per image, min(method.mipc="
                f"{self.mipc}, smallest class) images): lower ipc or method.factor, or raise method.mipc"
            )
        self.check_observer_source()
        self.observer(data)  # loads (a missing teacher: trained, rank 0 first), checks classes

    def check_observer_source(self) -> None:
        self.source.check()

    # -- the observer ---------------------------------------------------------------------------------
    def observer(self, data: ImageClassificationData) -> Observer:
        return self.source.get(data)

    def cache(self, data: ImageClassificationData, seed: int) -> ScoreCache:
        settings = self.settings(data, seed)
        if self._cache is None or self._cache.settings.get("rded") != settings:
            self._cache = ScoreCache(self.score_cache_dir, {"rded": settings})
        return self._cache

    # -- per class ------------------------------------------------------------------------------------
    def candidates(self, data: ImageClassificationData, label: int, seed: int) -> torch.Tensor:
        """Positions (within the class) of its ``mipc`` candidate images, in draw order (the
        official code shuffles the class's files and takes the first mipc)."""
        n = len(data.class_indices(label))
        order = torch.randperm(n, generator=rng_for(seed, "rded", data.class_ids[label]))
        return order[: min(self.mipc, n)]

    def score(self, data, label: int, positions: torch.Tensor, seed: int, observer: Observer) -> tuple:
        """(kept corners (n, 2), kept losses (n,), per-crop table (n, num_crop * 4)) for the class
        images at ``positions``; table rows are (top, left, size, loss) per crop."""
        side, class_id = data.resolution // self.factor_for(data), data.class_ids[label]
        indices = data.class_indices(label)[positions].tolist()
        fill = observer.pad_fill(data.channels)
        chunk = max(1, self.batch_size // self.num_crop)
        progress = RateLog(f"rded: scoring class {class_id}", len(indices))
        tables = []
        for start in range(0, len(indices), chunk):
            images = data.train.load(indices[start : start + chunk])
            boxes = torch.stack(
                [
                    crop_boxes(
                        rng_for(seed, "rded", class_id, int(p)), data.resolution, self.num_crop, self.scale
                    )
                    for p in positions[start : start + chunk]
                ]
            )  # (b, num_crop, 3)
            crops = cut(images.repeat_interleave(self.num_crop, 0), boxes.flatten(0, 1), side)
            losses = observer.losses(pad_center(crops, data.resolution, fill), label)
            self.timings["observer_calls"] += 1
            tables.append(torch.cat([boxes.float(), losses.view(-1, self.num_crop, 1)], dim=2))
            progress.update(min(start + chunk, len(indices)))
        table = torch.cat(tables)
        best, kept = keep_best(table[..., 3])
        corners = table[torch.arange(len(table)), best, :2].long()
        return corners, kept, table.flatten(1)

    def distill_class(
        self, data: ImageClassificationData, label: int, ipc: int, seed: int, generator=None
    ) -> tuple[torch.Tensor, dict]:
        observer = self.observer(data)
        positions = self.candidates(data, label, seed)
        cache = self.cache(data, seed)
        condition = f"class:{data.class_ids[label]}|output:{int(observer.outputs[label])}"
        scores = cache.load(observer, data, label, condition)
        missing = scores.missing(positions)
        if len(missing):
            tic = time.perf_counter()
            scores.fill(missing, *self.score(data, label, missing, seed, observer))
            cache.save(scores, observer, data, label, condition)
            self.timings["score_seconds"] += time.perf_counter() - tic
            self.timings["scored_images"] += len(missing)
        factor = self.factor_for(data)
        chosen = positions[rank(scores.relevance[positions], ipc * factor * factor)]
        table = scores.features[chosen].view(len(chosen), self.num_crop, 4)
        best, loss = keep_best(table[..., 3])
        boxes = table[torch.arange(len(chosen)), best, :3].long()
        indices = data.class_indices(label)[chosen].tolist()
        patches = cut(data.train.load(indices), boxes, data.resolution // factor)
        images = stitch(patches, factor, ipc, data.resolution)
        return images, slot_info(indices, boxes, loss, factor, ipc)


def slot_info(indices: list[int], boxes: torch.Tensor, loss: torch.Tensor, factor: int, ipc: int) -> dict:
    """Manifest lists per image: its patches' train indices, boxes (top, left, size) and losses,
    in slot order (row-major); one patch per image: the values themselves."""
    slots = [[k * ipc + i for k in range(factor * factor)] for i in range(ipc)]

    def per_image(values: list) -> list:
        return [[values[j] for j in s] if factor > 1 else values[s[0]] for s in slots]

    return {
        "source_index": per_image(indices),
        "crop_box": per_image(boxes.tolist()),
        "observer_loss": per_image([round(float(v), 6) for v in loss]),
    }

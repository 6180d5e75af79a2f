"""One scoring pass serves every IPC and every class subset: per-class scores kept on disk.

For each class, the cache holds one row per train image of the class (by position in the
class): whether it was scored, its best window (top/left pixels), the window's relevance and the
patch's feature vector. Selecting for another IPC, another seed or a dataset that shares the
class (ImageNette and ImageNet-100 share wnids) reads the rows and runs no diffusion model.
Rows missing from a file (e.g. a run that scored 300 images per class, then one that wants all)
are scored and added.

Files: ``<root>/<generator>-<settings key>/<class_id>-<class key>.pt``. The settings key hashes
the generator (name and all its weights) and every scoring setting, the precision scoring ran in
included (``PatchSelection.settings``: bf16 under ``sample_precision=bf16``); the class key hashes
what the class's scores depend on: its condition (class index or prompt), and its images (file
paths, sizes and modification times, or the pixels of in-memory sets). Writes go to a temp
file renamed into place.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ddcore.data.base import ImageClassificationData, folder_safe
from ddcore.files import atomic_write, short_hash
from ddcore.latent_cache import state_dict_hash

log = logging.getLogger(__name__)
FORMAT = 1  # bump when the way scores are computed changes


def class_images_identity(data: ImageClassificationData, label: int) -> str:
    """The content digest of the class's train images: path, size and mtime of each file (an
    image rewritten in place gets a new key), or the pixels of in-memory sets."""
    return data.class_digest(label)[:16]


@dataclass
class ClassScores:
    """Rows for every train image of a class; only ``scored`` rows hold values."""

    scored: torch.Tensor  # (n,) bool
    corners: torch.Tensor  # (n, 2) long: top/left pixel of the best window
    relevance: torch.Tensor  # (n,) float: mean relevance inside that window
    features: torch.Tensor  # (n, D) float (D = 0 until the first features arrive)

    @classmethod
    def empty(cls, n: int) -> "ClassScores":
        return cls(
            torch.zeros(n, dtype=torch.bool),
            torch.zeros(n, 2, dtype=torch.long),
            torch.zeros(n),
            torch.zeros(n, 0),
        )

    def missing(self, positions: torch.Tensor) -> torch.Tensor:
        return positions[~self.scored[positions]]

    def fill(
        self, positions: torch.Tensor, corners: torch.Tensor, relevance: torch.Tensor, features: torch.Tensor
    ) -> None:
        if self.features.shape[1] != features.shape[1]:
            self.features = torch.zeros(len(self.scored), features.shape[1])
        self.corners[positions] = corners.long()
        self.relevance[positions] = relevance.float()
        self.features[positions] = features.float()
        self.scored[positions] = True

    def state(self) -> dict:
        return {
            "scored": self.scored,
            "corners": self.corners,
            "relevance": self.relevance,
            "features": self.features,
        }


class ScoreCache:
    """Per-class ``ClassScores`` under ``root`` (None: kept in memory for this run only)."""

    def __init__(self, root: str | Path | None, settings: dict):
        self.root = Path(root) if root else None
        self.settings = self.full_settings(settings)
        self._memory: dict[str, ClassScores] = {}
        self._paths: dict[tuple, Path] = {}  # hashing a class's images once per run is enough

    @staticmethod
    def full_settings(settings: dict) -> dict:
        """The settings the key hashes: the scoring settings and the file format."""
        return {"format": FORMAT, **settings}

    def folder(self, generator) -> Path:
        identity = {"name": generator.name, "weights": state_dict_hash(generator), "settings": self.settings}
        return self.root / f"{folder_safe(generator.name)}-{short_hash(identity)}"

    def path(self, generator, data: ImageClassificationData, label: int, condition: str) -> Path:
        memo = (id(generator), data.name, data.class_ids[label], condition)
        if memo not in self._paths:
            key = short_hash({"condition": condition, "images": class_images_identity(data, label)})
            self._paths[memo] = self.folder(generator) / f"{folder_safe(data.class_ids[label])}-{key}.pt"
        return self._paths[memo]

    def load(self, generator, data: ImageClassificationData, label: int, condition: str) -> ClassScores:
        n = len(data.class_indices(label))
        if self.root is None:
            return self._memory.setdefault(f"{label}:{condition}", ClassScores.empty(n))
        path = self.path(generator, data, label, condition)
        if path.is_file():
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                if len(state["scored"]) == n:
                    return ClassScores(**state)
                log.warning(f"ignoring {path}: it holds {len(state['scored'])} rows for {n} images")
            except Exception as exc:  # a foreign or truncated file: score again
                log.warning(f"ignoring unreadable score cache file {path}: {exc}")
        return ClassScores.empty(n)

    def save(
        self, scores: ClassScores, generator, data: ImageClassificationData, label: int, condition: str
    ) -> None:
        if self.root is None:
            return
        path = self.path(generator, data, label, condition)
        state = scores.state()
        atomic_write(path, lambda tmp: torch.save(state, tmp))

"""Diversity and representativeness of a distilled set, per image and per class (docs/protocols.md).

- **diversity** of a distilled sample: distance to the nearest *other* distilled sample of its
  class (higher = more diverse; undefined with one image per class);
- **representativeness**: mean distance to its k = min(50, real images of the class) nearest real
  samples of the class (lower = more representative).

Distances are Euclidean in a feature space:

- ``pixels``: flattened images at the dataset resolution (the default: needs no model, and the
  same for every method, so random real, unguided and MGD^3 compare directly);
- ``latents``: the output of an ``encoder`` passed in (``generator.encode``, or a teacher's
  penultimate features);
- ``tsne``: a joint 2-D t-SNE of the real and distilled features of each class, seeded; the
  features are the encoder's when one is given, else pixels. The MGD^3 paper measures here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch

from ddcore.data.base import ImageClassificationData, as_float
from ddcore.distilled import DistilledSet
from ddcore.seeding import derive_seed, rng_for
from eval.batches import SourceBatches, decoded

SPACES = ("pixels", "latents", "tsne")
Encoder = Callable[[torch.Tensor], torch.Tensor]  # images (n, C, R, R) in [0, 1] -> (n, ...)


# -- distances ---------------------------------------------------------------------------------
def diversity(features: torch.Tensor) -> torch.Tensor:
    """(n,) distance of each row to its nearest other row; NaN when n < 2."""
    n = len(features)
    if n < 2:
        return torch.full((n,), math.nan)
    dist = torch.cdist(features, features)
    dist.fill_diagonal_(math.inf)
    return dist.min(dim=1).values


def representativeness(features: torch.Tensor, real: torch.Tensor, k: int = 50) -> torch.Tensor:
    """(n,) mean distance of each row of ``features`` to its min(k, len(real)) nearest ``real``."""
    k = min(k, len(real))
    return torch.cdist(features, real).topk(k, dim=1, largest=False).values.mean(dim=1)


def tsne_embed(
    real: torch.Tensor, distilled: torch.Tensor, seed: int, perplexity: float = 30.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint 2-D t-SNE of real and distilled features -> (real_xy, distilled_xy)."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    if is_degenerate(real, distilled):  # t-SNE of < 4 or identical points: NaNs (or a crash)
        return torch.zeros(len(real), 2), torch.zeros(len(distilled), 2)
    joint = torch.cat([real, distilled]).double().numpy()
    # sklearn needs perplexity < n; n / 3 keeps tiny classes meaningful
    perplexity = max(1.0, min(perplexity, (len(joint) - 1) / 3))
    # one thread: reproducible, and Barnes-Hut's OpenMP threads crawl when the cores are busy
    # (measured 1.3 s vs 8-47 s for 143 points on 2 loaded cores)
    with threadpool_limits(1):
        xy = TSNE(
            n_components=2, perplexity=perplexity, init="pca", random_state=seed % (2**31)
        ).fit_transform(joint)
    xy = torch.from_numpy(xy).float()
    return xy[: len(real)], xy[len(real) :]


def is_degenerate(real: torch.Tensor, distilled: torch.Tensor) -> bool:
    """Too few points, or all alike, for a neighbourhood embedding (one image, constant images)."""
    joint = torch.cat([real.flatten(1), distilled.flatten(1)]).float()
    return len(joint) < 4 or len(real) < 2 or bool((joint.amax(0) - joint.amin(0)).max() <= 1e-6)


# -- features ----------------------------------------------------------------------------------
def features_of(images: torch.Tensor, encoder: Encoder | None = None, batch_size: int = 256) -> torch.Tensor:
    """(n, d) float32 CPU features of uint8 or [0, 1] images: flattened pixels in [0, 1], or the
    encoder's output flattened (floats made one batch at a time)."""
    if encoder is None:
        return torch.cat([as_float(chunk).flatten(1) for chunk in images.split(batch_size)])
    with torch.no_grad():
        return torch.cat(
            [encoder(as_float(chunk)).flatten(1).float().cpu() for chunk in images.split(batch_size)]
        )


def real_indices(data: ImageClassificationData, label: int, max_real: int | None, seed: int) -> torch.Tensor:
    """The class's train indices compared against: a seeded subset of ``max_real`` when larger."""
    indices = data.class_indices(label, "train")
    if max_real is not None and len(indices) > max_real:
        pick = torch.randperm(len(indices), generator=rng_for(seed, "set_metrics", label))
        indices = indices[pick[:max_real]].sort().values
    return indices


def real_features(
    data: ImageClassificationData,
    classes: Sequence[int],
    encoder: Encoder | None,
    max_real: int | None,
    seed: int,
    batch_size: int = 256,
    workers: int = 0,
) -> Iterator[tuple[int, torch.Tensor]]:
    """(label, features of its real images) for each of ``classes`` in turn: the images are
    decoded by ``workers`` DataLoader processes (one loader for all classes), as uint8, and only
    one class's features are held at a time."""
    chunks = [
        (label, chunk)
        for label in classes
        for chunk in real_indices(data, label, max_real, seed).split(batch_size)
    ]
    loader = torch.utils.data.DataLoader(
        range(len(data.train)),
        batch_sampler=[chunk.tolist() for _, chunk in chunks],
        collate_fn=SourceBatches(data.train),
        num_workers=workers,
    )
    current, parts = None, []
    for (label, _), (images, _) in zip(chunks, decoded(loader)):
        if label != current and parts:
            yield current, torch.cat(parts)
            parts = []
        current = label
        parts.append(features_of(images, encoder))
    if parts:
        yield current, torch.cat(parts)


# -- the metrics of a set ----------------------------------------------------------------------
@dataclass
class SetMetrics:
    """Per-image values aligned with the distilled set's order, per-class rows, a summary."""

    space: str
    k: int
    diversity: torch.Tensor  # (n,)
    representativeness: torch.Tensor  # (n,)
    labels: torch.Tensor  # (n,)
    per_class: list[dict]
    embeddings: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    degenerate: list[int] = field(default_factory=list)  # classes with one real image or constant images

    def summary(self) -> dict:
        """Mean over images (NaN diversities of one-image classes left out) -> metrics.json."""
        return {
            "set/space": self.space,
            "set/k": self.k,
            "set/diversity_mean": nan_to_none(nanmean(self.diversity)),
            "set/representativeness_mean": nan_to_none(nanmean(self.representativeness)),
        }


def nanmean(values: torch.Tensor) -> float:
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if len(finite) else math.nan


def nan_to_none(value: float) -> float | None:
    """JSON has no NaN: undefined values are written as null."""
    return None if math.isnan(value) else value


def set_metrics(
    distilled: DistilledSet,
    data: ImageClassificationData,
    space: str = "pixels",
    encoder: Encoder | None = None,
    k: int = 50,
    seed: int = 0,
    max_real: int | None = 1000,
    classes: Sequence[int] | None = None,
    workers: int = 0,
) -> SetMetrics:
    """Diversity and representativeness of every distilled image in ``space`` (module doc).

    ``max_real`` caps the real images per class (a seeded subset; None = all), decoded by
    ``workers`` DataLoader processes; ``classes`` restricts to some labels (default: every class
    with distilled images). Images of skipped classes get NaN.
    """
    if space not in SPACES:
        raise ValueError(f"unknown feature space {space!r} (one of {', '.join(SPACES)})")
    if space == "latents" and encoder is None:
        raise ValueError("space='latents' needs an encoder (e.g. generator.encode)")
    n = len(distilled)
    div, rep = torch.full((n,), math.nan), torch.full((n,), math.nan)
    labels = distilled.labels.cpu()
    classes = sorted(set(labels.tolist())) if classes is None else list(classes)
    classes = [label for label in classes if bool((labels == label).any())]
    rows, embeddings, degenerate = [], {}, []
    for label, real in real_features(data, classes, encoder, max_real, seed, workers=workers):
        where = torch.nonzero(labels == label).flatten()
        fake = features_of(distilled.images[where].cpu(), encoder)
        if is_degenerate(real, fake):
            degenerate.append(label)
        if space == "tsne":
            real, fake = tsne_embed(real, fake, derive_seed(seed, "tsne", label))
            embeddings[label] = (real, fake)
        div[where], rep[where] = diversity(fake), representativeness(fake, real, k)
        rows.append(class_row(data, label, div[where], rep[where], len(real), k))
    return SetMetrics(space, k, div, rep, labels, rows, embeddings, degenerate)


def class_row(
    data: ImageClassificationData, label: int, div: torch.Tensor, rep: torch.Tensor, n_real: int, k: int
) -> dict:
    return {
        "label": label,
        "class_id": data.class_ids[label],
        "class_name": data.class_names[label],
        "images": len(div),
        "real": n_real,
        "k": min(k, n_real),
        "diversity_mean": nan_to_none(nanmean(div)),
        "diversity_min": nan_to_none(float(div.min())) if len(div) > 1 else None,
        "representativeness_mean": nan_to_none(nanmean(rep)),
    }


def tsne_panels(
    distilled: DistilledSet,
    data: ImageClassificationData,
    classes: Sequence[int],
    encoder: Encoder | None = None,
    seed: int = 0,
    max_real: int | None = 1000,
    workers: int = 0,
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """label -> (real_xy, distilled_xy): per-class joint t-SNE, for ``figures.save_tsne``."""
    panels = {}
    labels = distilled.labels.cpu()
    classes = [label for label in classes if bool((labels == label).any())]
    for label, real in real_features(data, classes, encoder, max_real, seed, workers=workers):
        fake = distilled.images[labels == label].cpu()
        panels[label] = tsne_embed(real, features_of(fake, encoder), derive_seed(seed, "tsne", label))
    return panels

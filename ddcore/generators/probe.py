"""Generated-sample accuracy: do samples of class c look like class c to a real-data classifier?

The probe is a logistic regression on the real train images (shrunk to at most 16 px): cheap,
deterministic, and independent of the students under evaluation. ``probe_report`` adds the
probe's own accuracy on the real test split (the ceiling a sample can be judged against) and
the diversity of the samples: the mean pairwise L2 distance within each class (pixels in
[0, 1], at the probe resolution), next to the same number for as many real train images.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from ddcore.data.base import ImageClassificationData, resize_images
from ddcore.generators.base import DiffusionGenerator
from ddcore.sampling import sample_latents
from ddcore.seeding import rng_for

log = logging.getLogger(__name__)

PROBE_RESOLUTION = 16
MAX_PROBE_TRAIN = 10000  # a seeded subset of larger train splits: the fit stays seconds


def _features(images01: torch.Tensor, resolution: int) -> np.ndarray:
    return resize_images(images01, min(resolution, PROBE_RESOLUTION)).flatten(1).numpy()


def _subset(n: int, limit: int, seed: int = 0) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def fit_probe(data: ImageClassificationData):
    from sklearn.linear_model import LogisticRegression

    idx = _subset(len(data.train), MAX_PROBE_TRAIN)
    images = data.train.load(idx)
    probe = LogisticRegression(max_iter=2000)
    probe.fit(_features(images, data.resolution), data.train.labels.numpy()[idx])
    return probe


def real_test_accuracy(probe, data: ImageClassificationData) -> float:
    images = data.test.load(range(len(data.test)))
    predicted = probe.predict(_features(images, data.resolution))
    return float((predicted == data.test.labels.numpy()).mean())


def mean_pairwise_distance(features: np.ndarray) -> float:
    """Mean L2 distance over all pairs i < j of the rows of ``features``."""
    x = torch.from_numpy(np.asarray(features, dtype=np.float64))
    n = len(x)
    return float(torch.pdist(x).mean()) if n > 1 else 0.0


def generate_for_probe(
    generator: DiffusionGenerator,
    data: ImageClassificationData,
    label: int,
    per_class: int,
    steps: int,
    seed: int,
) -> torch.Tensor:
    labels = torch.full((per_class,), label, dtype=torch.long)
    latents = sample_latents(generator, labels, rng=rng_for(seed, "probe", label), steps=steps)
    return resize_images(generator.decode(latents).cpu(), data.resolution)


def probe_report(
    generator: DiffusionGenerator,
    data: ImageClassificationData,
    per_class: int,
    steps: int = 50,
    seed: int = 12345,
) -> dict:
    """Sample accuracy, the probe's real test accuracy and per-class diversity (gen vs real)."""
    probe = fit_probe(data)
    real_labels = data.train.labels.numpy()
    correct, div_gen, div_real = 0, [], []
    for label in range(data.num_classes):
        feats = _features(generate_for_probe(generator, data, label, per_class, steps, seed), data.resolution)
        correct += int((probe.predict(feats) == label).sum())
        idx = np.flatnonzero(real_labels == label)
        idx = idx[_subset(len(idx), per_class, seed=label)]
        div_gen.append(mean_pairwise_distance(feats))
        div_real.append(mean_pairwise_distance(_features(data.train.load(idx), data.resolution)))
    return {
        "sample_accuracy": correct / (per_class * data.num_classes),
        "probe_real_accuracy": real_test_accuracy(probe, data),
        "diversity_generated": float(np.mean(div_gen)),
        "diversity_real": float(np.mean(div_real)),
        "diversity_per_class": {
            data.class_ids[i]: [round(g, 4), round(r, 4)] for i, (g, r) in enumerate(zip(div_gen, div_real))
        },
        "probe_per_class": per_class,
        "probe_steps": steps,
        "cfg_scale": generator.cfg_scale,
    }


def generated_sample_accuracy(
    generator: DiffusionGenerator,
    data: ImageClassificationData,
    per_class: int,
    steps: int = 50,
    seed: int = 12345,
) -> float:
    return probe_report(generator, data, per_class, steps, seed)["sample_accuracy"]


def run_probe(generator, data: ImageClassificationData, per_class: int) -> dict:
    """The end-of-training probe, logged in one line; ``sample_accuracy`` + the full report."""
    start = time.perf_counter()
    report = probe_report(generator, data, per_class)
    report["probe_seconds"] = round(time.perf_counter() - start, 1)
    log.info(
        f"{generator.name}: generated-sample accuracy {report['sample_accuracy']:.3f} "
        f"(probe trained on real {data.name}, {report['probe_real_accuracy']:.3f} on its "
        f"test split); per-class mean pairwise distance {report['diversity_generated']:.3f} "
        f"generated vs {report['diversity_real']:.3f} real"
    )
    return {"sample_accuracy": report["sample_accuracy"], "probe": report}

"""Generated-sample accuracy: do samples of class c look like class c to a real-data classifier?

The probe is a logistic regression on the real train images (shrunk to at most 16 px): cheap,
deterministic, and independent of the students under evaluation.
"""

from __future__ import annotations

import numpy as np
import torch

from ddcore.data.base import ImageClassificationData, resize_images
from ddcore.generators.base import DiffusionGenerator
from ddcore.sampling import sample_latents
from ddcore.seeding import rng_for

PROBE_RESOLUTION = 16


def _features(images01: torch.Tensor, resolution: int) -> np.ndarray:
    return resize_images(images01, min(resolution, PROBE_RESOLUTION)).flatten(1).numpy()


def fit_probe(data: ImageClassificationData):
    from sklearn.linear_model import LogisticRegression

    images = data.train.load(range(len(data.train)))
    probe = LogisticRegression(max_iter=2000)
    probe.fit(_features(images, data.resolution), data.train.labels.numpy())
    return probe


def generated_sample_accuracy(generator: DiffusionGenerator, data: ImageClassificationData,
                              per_class: int, steps: int = 50, seed: int = 12345) -> float:
    probe = fit_probe(data)
    correct = 0
    for label in range(data.num_classes):
        labels = torch.full((per_class,), label, dtype=torch.long)
        latents = sample_latents(generator, labels, rng=rng_for(seed, "probe", label), steps=steps)
        images = resize_images(generator.decode(latents).cpu(), data.resolution)
        correct += int((probe.predict(_features(images, data.resolution)) == label).sum())
    return correct / (per_class * data.num_classes)

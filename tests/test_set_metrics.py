"""Diversity and representativeness on a fixed tiny set, checked against hand-computed values."""

import math

import pytest
import torch

from ddcore.data.base import ImageClassificationData, TensorSource
from ddcore.distilled import DistilledSet
from eval.set_metrics import set_metrics, tsne_panels

S2, S3 = math.sqrt(2), math.sqrt(3)


def images(*pixels):
    """1x2x2 images in [0, 1] from flat pixel lists."""
    return torch.tensor(pixels, dtype=torch.float32).view(-1, 1, 2, 2)


def tiny_data(real_per_class=None) -> ImageClassificationData:
    """Class 0: real r1=0000, r2=1100, r3=1110; class 1: real 1111, 0111."""
    real = real_per_class or [
        images([0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]),
        images([1, 1, 1, 1], [0, 1, 1, 1]),
    ]
    x = torch.cat(real)
    y = torch.cat([torch.full((len(r),), c) for c, r in enumerate(real)])
    source = TensorSource((x * 255).round().to(torch.uint8), y)
    return ImageClassificationData(
        name="tiny",
        class_ids=["a", "b"],
        class_names=["A", "B"],
        resolution=2,
        channels=1,
        train=source,
        test=source,
    )


def tiny_distilled() -> DistilledSet:
    """Class 0: a=0000, b=1000, c=1111; class 1: one image d=1111."""
    x = images([0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1])
    return DistilledSet(x, torch.tensor([0, 0, 0, 1]))


def test_pixel_metrics_equal_hand_computed_values():
    result = set_metrics(tiny_distilled(), tiny_data(), space="pixels")
    # diversity: a-b = 1, a-c = 2, b-c = sqrt(3); one image of class 1 -> undefined
    assert result.diversity[:3].tolist() == pytest.approx([1.0, 1.0, S3])
    assert math.isnan(result.diversity[3])
    # representativeness, k = min(50, 3 real) = 3 for class 0 and 2 for class 1
    expected = [(0 + S2 + S3) / 3, (1 + 1 + S2) / 3, (2 + S2 + 1) / 3, (0 + 1) / 2]
    assert result.representativeness.tolist() == pytest.approx(expected)
    summary = result.summary()
    assert summary["set/diversity_mean"] == pytest.approx((2 + S3) / 3)
    assert summary["set/representativeness_mean"] == pytest.approx(sum(expected) / 4)
    row0, row1 = result.per_class
    assert (row0["class_id"], row0["class_name"], row0["images"], row0["real"], row0["k"]) == (
        "a",
        "A",
        3,
        3,
        3,
    )
    assert row0["diversity_mean"] == pytest.approx((2 + S3) / 3)
    assert row0["diversity_min"] == pytest.approx(1.0)
    assert row0["representativeness_mean"] == pytest.approx(sum(expected[:3]) / 3)
    assert row1["diversity_mean"] is None and row1["diversity_min"] is None  # JSON: null, not NaN
    assert row1["k"] == 2


def test_k_limits_the_real_neighbours():
    result = set_metrics(tiny_distilled(), tiny_data(), k=2)
    assert result.representativeness[:3].tolist() == pytest.approx([S2 / 2, 1.0, (1 + S2) / 2])


def test_latents_space_uses_the_encoder():
    calls = []

    def encoder(x):
        calls.append(len(x))
        return 2 * x

    pixels = set_metrics(tiny_distilled(), tiny_data())
    latents = set_metrics(tiny_distilled(), tiny_data(), space="latents", encoder=encoder)
    assert latents.diversity[:3].tolist() == pytest.approx((2 * pixels.diversity[:3]).tolist())
    assert latents.representativeness.tolist() == pytest.approx((2 * pixels.representativeness).tolist())
    assert calls and latents.space == "latents"
    with pytest.raises(ValueError, match="needs an encoder"):
        set_metrics(tiny_distilled(), tiny_data(), space="latents")
    with pytest.raises(ValueError, match="unknown feature space"):
        set_metrics(tiny_distilled(), tiny_data(), space="clip")


def random_set(seed=0, real=20, fake=3):
    g = torch.Generator().manual_seed(seed)
    reals = [torch.rand(real, 1, 2, 2, generator=g) for _ in range(2)]
    fakes = torch.rand(2 * fake, 1, 2, 2, generator=g)
    return tiny_data(reals), DistilledSet(fakes, torch.tensor([0] * fake + [1] * fake))


def test_tsne_space_is_seeded_and_shared_with_the_figure_panels():
    data, distilled = random_set()
    first = set_metrics(distilled, data, space="tsne", seed=3)
    assert torch.isfinite(first.diversity).all() and torch.isfinite(first.representativeness).all()
    real_xy, fake_xy = first.embeddings[0]
    assert real_xy.shape == (20, 2) and fake_xy.shape == (3, 2)
    panels = tsne_panels(distilled, data, [0], seed=3)  # a second t-SNE of class 0, same seed
    assert torch.equal(panels[0][1], fake_xy)  # reproducible; the figure shows what was measured


def test_max_real_takes_a_seeded_subset():
    data, distilled = random_set(real=30)
    a = set_metrics(distilled, data, max_real=10, seed=1)
    b = set_metrics(distilled, data, max_real=10, seed=1)
    assert torch.equal(a.representativeness, b.representativeness)
    assert a.per_class[0]["real"] == 10 and a.per_class[0]["k"] == 10
    full = set_metrics(distilled, data, max_real=None)
    assert full.per_class[0]["real"] == 30

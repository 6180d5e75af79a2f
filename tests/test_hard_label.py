"""Hard-label protocol: batched augmentation, the data path, a tiny run, learning, bad input."""

from functools import partial

import lightning.pytorch as pl
import pytest
import torch

from ddcore.data.small import digits
from ddcore.distilled import DistilledSet, random_real_subset
from ddcore.errors import UserError
from eval.augment import (
    BatchAugment,
    color_jitter,
    lighting,
    make_cutmix,
    random_resized_crop,
    shuffle_patches,
)
from eval.batches import TrainSet
from eval.hard_label import HardLabelProtocol
from eval.protocol import check_distilled
from eval.students import ConvNet

CPU = partial(pl.Trainer, accelerator="cpu", devices=1)


@pytest.fixture(scope="module")
def data():
    return digits()


def rng(seed=0):
    return torch.Generator().manual_seed(seed)


# -- augmentation --------------------------------------------------------------------------------
def test_color_jitter_matches_idc_ops():
    x = torch.rand(3, 3, 8, 8)
    assert torch.equal(color_jitter(x, rng(), 0, 0, 0), x)
    bright = color_jitter(x, rng(1), 0.4, 0, 0)  # x.lerp(0, a) = (1 - a) x, one factor per image
    factors = (bright / x).flatten(1)
    assert torch.allclose(factors, factors[:, :1].expand_as(factors), atol=1e-5)
    assert ((factors[:, 0] >= 0.6) & (factors[:, 0] <= 1.4)).all()
    gray = color_jitter(torch.rand(2, 1, 8, 8), rng(), 0, 0, 0.4)  # saturation: no-op for grayscale
    assert gray.shape == (2, 1, 8, 8)


def idc_color_jitter(images, rng, strengths):
    """IDC's ColorJitter one image at a time (Brightness/Contrast/Saturation lerps, random order)."""
    n = len(images)
    alphas = (torch.rand(n, 3, generator=rng) * 2 - 1) * torch.tensor(strengths)
    order = torch.rand(n, 3, generator=rng).argsort(dim=1)
    out = []
    for img, a, ops in zip(images, alphas, order):
        for op in ops.tolist():
            gray = (img * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
            target = [torch.zeros_like(img), gray.mean().expand_as(img), gray.expand_as(img)][op]
            img = img.lerp(target, float(a[op]))
        out.append(img)
    return torch.stack(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_color_jitter_equals_idc_per_image(seed):
    x = torch.rand(6, 3, 8, 8)
    expected = idc_color_jitter(x, rng(seed), (0.4, 0.4, 0.4))
    assert torch.allclose(color_jitter(x, rng(seed), 0.4, 0.4, 0.4), expected, atol=1e-5)


def test_lighting_adds_one_rgb_shift_per_image_and_skips_grayscale():
    x = torch.rand(4, 3, 8, 8)
    shift = lighting(x, rng(), 0.1) - x
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift), atol=1e-6)
    assert shift.abs().max() > 0
    g = torch.rand(2, 1, 8, 8)
    assert torch.equal(lighting(g, rng(), 0.1), g)


def test_shuffle_patches_moves_whole_strips():
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(8, 1, 1, 1)
    out = shuffle_patches(x, rng(), factor=2)

    def quadrants(img):
        return {tuple(img[i : i + 2, j : j + 2].flatten().tolist()) for i in (0, 2) for j in (0, 2)}

    for img in out:
        assert sorted(img.flatten().tolist()) == list(range(16))
        assert quadrants(img[0]) == quadrants(x[0, 0])
    assert not all(torch.equal(o, x[0]) for o in out)  # some images were shuffled
    assert torch.equal(shuffle_patches(x, rng(), factor=1), x)


def test_augment_is_seeded_and_keeps_full_crop_identity():
    x = torch.rand(4, 1, 16, 16)
    a = random_resized_crop(x, rng())
    assert torch.equal(a, random_resized_crop(x, rng())) and not torch.allclose(a, x)
    same = random_resized_crop(x, rng(), scale=(1, 1), ratio=(1, 1), flip=False)
    assert torch.allclose(same, x, atol=1e-5)
    pipeline = BatchAugment(color_jitter=(0.4, 0.4, 0.4), lighting=0.1, shuffle_factor=2, seed=3)
    y = torch.rand(5, 3, 16, 16)
    assert torch.equal(
        pipeline(y), BatchAugment(color_jitter=(0.4, 0.4, 0.4), lighting=0.1, shuffle_factor=2, seed=3)(y)
    )


def test_cutmix_is_torchvisions_and_mixes_targets():
    from torchvision.transforms import v2

    cutmix = make_cutmix(10, 1.0)
    assert isinstance(cutmix, v2.CutMix) and make_cutmix(10, 0.0) is None
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8)
    mixed, target = cutmix(x, y)
    assert mixed.shape == x.shape and target.shape == (8, 10)
    assert torch.allclose(target.sum(dim=1), torch.ones(8))


# -- data path ------------------------------------------------------------------------------------
def test_set_is_held_as_one_uint8_tensor_and_batched_by_index(data):
    distilled = random_real_subset(data, ipc=2, seed=0)
    train = TrainSet.from_images(distilled.images, distilled.labels)
    assert train.images.dtype == torch.uint8 and train.images.shape == (20, 1, 16, 16)
    batch = next(iter(train.loader(8, seed=0)))
    assert batch.dtype == torch.long and batch.shape == (8,)
    protocol = HardLabelProtocol(partial(ConvNet, width=8), epochs=1)
    module = protocol.make_module(protocol.build_student(data), data, train, 1, 0, "s")
    assert module.bank.dtype == torch.uint8 and module.bank is train.images  # held, not copied
    assert "bank" not in dict(module.named_buffers())  # DDP broadcasts buffers every step
    x, y = module.train_batch(batch)
    assert x.dtype == torch.float32 and torch.equal(y, distilled.labels[batch])


# -- runs ------------------------------------------------------------------------------------------
def test_tiny_run_reports_final_best_and_histories(data):
    distilled = random_real_subset(data, ipc=2, seed=0)
    protocol = HardLabelProtocol(partial(ConvNet, width=8), epochs=4, evals=2, repeats=2)
    metrics = protocol.evaluate(distilled, data, ipc=2, seed=0, trainer_factory=CPU)
    assert metrics["student/repeats"] == 2 and len(metrics["student/final_acc_runs"]) == 2
    assert [[e for e, _ in h] for h in metrics["student/histories"]] == [[2, 4], [2, 4]]
    assert metrics["student/final_acc_mean"] == pytest.approx(
        sum(h[-1][1] for h in metrics["student/histories"]) / 2
    )
    assert metrics["student/best_acc_mean"] >= metrics["student/final_acc_mean"]
    assert metrics["student/final_acc_std"] >= 0 and metrics["student/batch_size"] == 20
    assert "reference/full_hard_acc" not in metrics  # reference points are off unless configured


def test_student_on_full_digits_reaches_90_percent(data):
    """The protocol learns: a small ConvNet on all 1347 train digits, 8 epochs."""
    protocol = HardLabelProtocol(partial(ConvNet, width=32), evals=2, repeats=1)
    metrics = protocol.train_real(data, seed=0, trainer_factory=CPU, epochs=8)
    assert metrics["student/final_acc_mean"] >= 0.9


def test_configured_students_run_through_hydra(make_cfg):
    from ddapp.jobs import build

    data = digits()
    distilled = random_real_subset(data, ipc=2, seed=0)
    for student in ("convnet", "resnet_ap10", "resnet18"):
        cfg = make_cfg(
            f"eval/student={student}", "eval.epochs=1", "eval.evals=1", "eval.reference.enabled=false"
        )
        metrics = build(cfg.eval).evaluate(distilled, data, 2, 0, build(cfg.trainer))
        assert metrics["student/arch"].startswith(
            {"convnet": "ConvNet", "resnet_ap10": "ResNetAP", "resnet18": "ResNet18"}[student]
        )


# -- bad input ---------------------------------------------------------------------------------------
def test_missing_classes_and_ipc_mismatch_are_refused(data):
    images = torch.rand(4, 1, 16, 16)
    with pytest.raises(UserError, match="no images of 8 of the 10 classes"):
        check_distilled(DistilledSet(images, torch.tensor([0, 0, 1, 1])), data, 2)
    uneven = DistilledSet(
        torch.rand(21, 1, 16, 16), torch.cat([torch.arange(10).repeat(2), torch.tensor([3])])
    )
    with pytest.raises(UserError, match="ipc mismatch: class '3' has 3 images but ipc=2"):
        check_distilled(uneven, data, 2)
    with pytest.raises(UserError, match="ipc mismatch"):
        check_distilled(random_real_subset(data, ipc=2, seed=0), data, 3)

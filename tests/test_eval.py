"""Hard-label evaluation pieces: student shapes, batched augmentation, and that it learns."""

from functools import partial

import lightning.pytorch as pl
import pytest
import torch

from ddcore.data.small import digits
from ddcore.real_selection import RandomReal
from eval.augment import random_resized_crop
from eval.hard_label import HardLabelProtocol, epochs_for_ipc
from eval.students import ConvNet, convnet_depth


@pytest.mark.parametrize("res, depth", [(16, 2), (28, 3), (32, 3), (64, 4), (224, 6)])
def test_convnet_depth_and_forward_backward(res, depth):
    assert convnet_depth(res) == depth
    net = ConvNet(3, 10, res, width=8)
    out = net(torch.rand(2, 3, res, res))
    out.sum().backward()
    assert out.shape == (2, 10) and sum(isinstance(m, torch.nn.AvgPool2d) for m in net.modules()) == depth


def test_epochs_follow_ipc_table():
    assert [epochs_for_ipc(i) for i in (1, 10, 50, 200, 500, 1000)] == [3000, 2000, 1500, 1000, 500, 300]


def test_augment_is_seeded_and_keeps_full_crop_identity():
    x = torch.rand(4, 1, 16, 16)
    a = random_resized_crop(x, torch.Generator().manual_seed(0))
    b = random_resized_crop(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape and not torch.allclose(a, x)
    same = random_resized_crop(x, torch.Generator().manual_seed(0), scale=(1, 1), ratio=(1, 1),
                               flip=False)
    assert torch.allclose(same, x, atol=1e-5)


def test_protocol_learns_from_real_digits():
    """Students trained on 10 real images per class do far better than chance (10%)."""
    data = digits()
    distilled = RandomReal().distill(data, ipc=10, seed=0)
    protocol = HardLabelProtocol(partial(ConvNet, width=32), epochs=40, evals=4, repeats=1)
    metrics = protocol.evaluate(distilled, data, ipc=10, seed=0,
                                trainer_factory=partial(pl.Trainer, accelerator="cpu"))
    assert metrics["student/final_acc_mean"] > 0.6
    assert metrics["student/best_acc_mean"] >= metrics["student/final_acc_mean"]

"""Hard-label evaluation pieces: student shapes, batched augmentation, and that it learns."""

from functools import partial

import lightning.pytorch as pl
import pytest
import torch

from ddcore.data.small import digits
from ddcore.distilled import random_real_subset
from eval.augment import random_resized_crop
from eval.hard_label import HardLabelProtocol, epochs_for_ipc
from eval.students import AvgPool2, ConvNet, convnet_depth


@pytest.mark.parametrize("res, depth", [(16, 2), (28, 3), (32, 3), (64, 4), (224, 6)])
def test_convnet_depth_and_forward_backward(res, depth):
    assert convnet_depth(res) == depth
    net = ConvNet(3, 10, res, width=8)
    out = net(torch.rand(2, 3, res, res))
    out.sum().backward()
    pools = sum(isinstance(m, (torch.nn.AvgPool2d, AvgPool2)) for m in net.modules())
    assert out.shape == (2, 10) and pools == depth


def test_epochs_follow_ipc_table():
    assert [epochs_for_ipc(i) for i in (1, 10, 50, 200, 500, 1000)] == [3000, 2000, 1500, 1000, 500, 300]


def test_augment_is_seeded_and_keeps_full_crop_identity():
    x = torch.rand(4, 1, 16, 16)
    a = random_resized_crop(x, torch.Generator().manual_seed(0))
    b = random_resized_crop(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape and not torch.allclose(a, x)
    same = random_resized_crop(x, torch.Generator().manual_seed(0), scale=(1, 1), ratio=(1, 1), flip=False)
    assert torch.allclose(same, x, atol=1e-5)


def test_protocol_learns_from_real_digits():
    """Students trained on 10 real images per class do far better than chance (10%)."""
    data = digits()
    distilled = random_real_subset(data, ipc=10, seed=0)
    protocol = HardLabelProtocol(partial(ConvNet, width=32), epochs=40, evals=4, repeats=1)
    metrics = protocol.evaluate(
        distilled, data, ipc=10, seed=0, trainer_factory=partial(pl.Trainer, accelerator="cpu")
    )
    assert metrics["student/final_acc_mean"] > 0.6
    assert metrics["student/best_acc_mean"] >= metrics["student/final_acc_mean"]


# -- external class-per-folder sets --------------------------------------------------------------
def write_folder(root, data, ipc, skip=()):
    from PIL import Image

    for label, class_id in enumerate(data.class_ids):
        if class_id in skip:
            continue
        (root / class_id).mkdir(parents=True)
        images = data.class_images(label)[:ipc]
        for i, image in enumerate(images):
            Image.fromarray((image[0] * 255).byte().numpy(), mode="L").save(root / class_id / f"{i}.png")
    return root


def test_external_folder_is_evaluated_with_labels_from_folder_names(tmp_path):
    from ddcore.distilled import load_distilled

    data = digits()
    distilled = load_distilled(write_folder(tmp_path / "set", data, ipc=2), data)
    assert distilled.per_class_counts(10) == [2] * 10
    protocol = HardLabelProtocol(partial(ConvNet, width=8), epochs=1, evals=1, repeats=1)
    metrics = protocol.evaluate(
        distilled, data, ipc=2, seed=0, trainer_factory=partial(pl.Trainer, accelerator="cpu")
    )
    (final,) = metrics["student/final_acc_runs"]  # one student, tested on the real test split
    assert metrics["student/final_acc_mean"] == final == metrics["student/histories"][0][-1][1]
    correct = final * len(data.test)
    assert correct == pytest.approx(round(correct)) and metrics["student/epochs"] == 1


def test_a_written_set_reads_back_as_the_same_tensor_in_label_order(tmp_path):
    """``task=evaluate`` on a run's folder trains on the tensor the run trained on, also when the
    class names do not sort as the labels (Fashion-MNIST: 'ankle_boot' is label 9)."""
    import dataclasses

    from baselines.real import RandomReal
    from ddcore.distilled import load_distilled
    from ddcore.sharding import distill_to_folder
    from eval.records import tensor_digest

    data = dataclasses.replace(digits(), class_ids=[f"{name}_{i}" for i, name in enumerate("jihgfedcba")])
    folder = tmp_path / "set"
    run = distill_to_folder(RandomReal(), data, 2, 0, None, folder, {})  # the set as the run read it
    evaluate = load_distilled(folder, data)
    assert evaluate.labels.tolist() == [label for label in range(10) for _ in range(2)]
    assert tensor_digest(evaluate.images, evaluate.labels) == tensor_digest(run.images, run.labels)


def test_external_folder_bad_input_is_named(tmp_path):
    from ddcore.distilled import load_distilled
    from ddcore.errors import UserError
    from eval.protocol import check_distilled

    data = digits()
    root = write_folder(tmp_path / "corrupt", data, ipc=1)
    (root / "3" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="broken.png"):
        load_distilled(root, data)
    root = write_folder(tmp_path / "empty", data, ipc=1)
    (root / "4" / "empty.png").write_bytes(b"")
    with pytest.raises(UserError, match="empty.png"):
        load_distilled(root, data)
    root = write_folder(tmp_path / "unknown", data, ipc=1)
    (root / "cat").mkdir()
    with pytest.raises(UserError, match=r"class folders \['cat'\] are not classes of digits"):
        load_distilled(root, data)
    missing = load_distilled(write_folder(tmp_path / "missing", data, ipc=1, skip=("7",)), data)
    with pytest.raises(UserError, match=r"no images of 1 of the 10 classes of digits \(e.g. \['7'\]\)"):
        check_distilled(missing, data, ipc=1)

"""Soft-label protocol: the loss, RDED's settings, teachers (trained, loaded, refused), a tiny run."""

import math
from functools import partial

import lightning.pytorch as pl
import pytest
import torch

from ddcore.data.base import ImageClassificationData, TensorSource
from ddcore.data.small import digits
from ddcore.distilled import random_real_subset
from ddcore.errors import UserError
from eval.soft_label import SoftLabelModule, SoftLabelProtocol, batch_size_for_ipc, lr_factor, soft_label_loss
from eval.students import ConvNet, ResNet18
from eval.teacher import Teacher, save_teacher
from tests.scores import assert_count_of, assert_students_scored

CPU = partial(pl.Trainer, accelerator="cpu", devices=1)
TINY_TRAIN = {"epochs": 1, "batch_size": 128, "evals": 1}


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("teachers")


def tiny_teacher(cache_dir, **kwargs) -> Teacher:
    return Teacher(
        partial(ResNet18, width=4, norm="batch"), cache_dir=str(cache_dir), train=TINY_TRAIN, **kwargs
    )


def test_soft_label_loss_equals_hand_computed_value():
    s = torch.tensor([[2.0, 0.0, -2.0], [0.5, 1.5, 0.0]])
    t = torch.tensor([[20.0, -20.0, 0.0], [0.0, 10.0, 30.0]])
    T = 20.0
    expected = 0.0
    for srow, trow in zip(s.tolist(), t.tolist()):
        p = [math.exp(v / T) / sum(math.exp(u / T) for u in trow) for v in trow]
        q = [math.exp(v / T) / sum(math.exp(u / T) for u in srow) for v in srow]
        expected += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    expected /= 2  # batchmean
    assert soft_label_loss(s, t, T).item() == pytest.approx(expected, rel=1e-5)
    assert soft_label_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-7)


def test_rded_batch_sizes_and_schedule():
    assert [batch_size_for_ipc(i, 10, 10_000) for i in (1, 10, 50)] == [10, 50, 100]
    assert [batch_size_for_ipc(i, 100, 10_000) for i in (1, 10, 50)] == [20, 100, 200]
    assert batch_size_for_ipc(10, 10, 20) == 20 and batch_size_for_ipc(50, 200, 10**5, "tinyimagenet") == 100
    assert lr_factor("rded_cosine", 0, 300) == 1.0
    assert lr_factor("rded_cosine", 300, 300) == pytest.approx(0.5)
    assert lr_factor("cosine", 300, 300) == pytest.approx(0.0, abs=1e-12)


def test_adamw_skips_weight_decay_on_one_dimensional_parameters():
    student, teacher = ConvNet(1, 10, 16, width=8), ConvNet(1, 10, 16, width=8)
    module = SoftLabelModule(
        student,
        teacher,
        10,
        3,
        dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01, schedule="rded_cosine"),
        None,
        1.0,
        None,
        "s",
        20.0,
    )
    opt = module.configure_optimizers()["optimizer"]
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.01 and all(p.ndim > 1 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.ndim == 1 for p in no_decay["params"])
    assert isinstance(opt, torch.optim.AdamW)


# -- teachers ------------------------------------------------------------------------------------
def test_teacher_is_trained_once_saved_with_its_classes_and_reloaded(data, teacher_dir):
    teacher = tiny_teacher(teacher_dir)
    model, meta = teacher.get(data, CPU)
    path = teacher.cache_path(data)
    record = torch.load(path, weights_only=True)
    assert record["class_ids"] == data.class_ids and record["arch"] == "ResNet18(norm=batch,width=4)"
    assert_count_of(meta["teacher/test_acc"], len(data.test))
    assert not model.training
    again, meta2 = tiny_teacher(teacher_dir).get(data, trainer_factory=None)  # from the cache
    assert meta2["teacher/source"] == str(path)
    x = torch.rand(3, 1, 16, 16)
    assert torch.allclose(model(x), again(x))


def test_teacher_with_permuted_class_order_is_refused(data, teacher_dir, tmp_path):
    teacher = tiny_teacher(teacher_dir)
    model, _ = teacher.get(data, CPU)
    permuted = ImageClassificationData(
        name="digits",
        class_ids=data.class_ids[1:] + data.class_ids[:1],
        class_names=data.class_names,
        resolution=16,
        channels=1,
        train=data.train,
        test=data.test,
    )
    path = save_teacher(tmp_path / "permuted.pt", model, teacher.arch, permuted, {})
    with pytest.raises(
        UserError,
        match=r"orders its classes differently .*\(label 0 is '1' for "
        r"the teacher, '0' for the dataset\)",
    ):
        tiny_teacher(teacher_dir, checkpoint=str(path)).get(data)


def test_teacher_of_another_architecture_or_without_record_is_refused(data, teacher_dir, tmp_path):
    model, _ = tiny_teacher(teacher_dir).get(data, CPU)
    other = Teacher(partial(ConvNet, width=8), checkpoint=str(tiny_teacher(teacher_dir).cache_path(data)))
    with pytest.raises(
        UserError,
        match=r"is a ResNet18\(norm=batch,width=4\), but eval.teacher.model "
        r"asks for ConvNet\(width=8\)",
    ):
        other.get(data)
    raw = tmp_path / "raw.pt"
    torch.save(model.state_dict(), raw)
    with pytest.raises(UserError, match="has no architecture/class-order record"):
        tiny_teacher(teacher_dir, checkpoint=str(raw)).get(data)
    with pytest.raises(UserError, match="teacher checkpoint not found"):
        tiny_teacher(teacher_dir, checkpoint=str(tmp_path / "none.pt")).get(data)


def test_timm_teacher_from_a_local_folder_picks_the_subset_logits(tmp_path):
    import timm

    from ddcore.data.classes import imagenet1k_wnids

    net = timm.create_model("resnet18", num_classes=1000)
    torch.save(net.state_dict(), tmp_path / "pytorch_model.bin")
    wnids = imagenet1k_wnids()
    picked = [wnids[5], wnids[0], wnids[999]]
    images = torch.zeros(3, 3, 32, 32, dtype=torch.uint8)
    subset = ImageClassificationData(
        name="tiny_subset",
        class_ids=picked,
        class_names=picked,
        resolution=32,
        channels=3,
        train=TensorSource(images, torch.arange(3)),
        test=TensorSource(images, torch.arange(3)),
    )
    from eval.students import timm_student

    teacher, _ = Teacher(partial(timm_student, name="resnet18"), pretrained_dir=str(tmp_path)).get(subset)
    x = torch.rand(2, 3, 32, 32)
    net.eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(teacher(x), net((x - mean) / std)[:, [5, 0, 999]], atol=1e-5)
    digits_like = ImageClassificationData(
        name="d",
        class_ids=["0", "1", "2"],
        class_names=["0", "1", "2"],
        resolution=32,
        channels=3,
        train=subset.train,
        test=subset.test,
    )
    with pytest.raises(UserError, match="do not cover d's classes"):
        Teacher(partial(timm_student, name="resnet18"), pretrained_dir=str(tmp_path)).get(digits_like)


# -- runs ------------------------------------------------------------------------------------------
def test_tiny_soft_label_run_keeps_the_teacher_frozen(data, teacher_dir):
    distilled = random_real_subset(data, ipc=2, seed=0)
    protocol = SoftLabelProtocol(
        partial(ConvNet, width=8), tiny_teacher(teacher_dir), epochs=2, evals=2, repeats=1
    )
    protocol.prepare(data, 0, CPU)
    bn = protocol._teacher_model[1].bn1
    before = bn.running_mean.clone()
    metrics = protocol.evaluate(distilled, data, ipc=2, seed=0, trainer_factory=CPU)
    assert torch.equal(bn.running_mean, before)  # the teacher stayed in eval mode
    assert metrics["student/protocol"] == "soft_label" and metrics["student/batch_size"] == 20
    assert [e for e, _ in metrics["student/histories"][0]] == [1, 2]
    assert "teacher/test_acc" in metrics
    assert_students_scored(metrics, len(data.test))


def test_soft_label_config_and_train_teacher_task(make_cfg):
    from pathlib import Path

    from ddapp.jobs import build

    overrides = [
        "eval=soft_label",
        "eval.teacher.train.epochs=1",
        "eval.teacher.model.width=4",
        "eval.reference.enabled=false",
    ]
    cfg = make_cfg("task=train_teacher", *overrides)
    metrics = build(cfg.task)(cfg)
    assert Path(metrics["teacher/checkpoint"]).is_file() and metrics["teacher/arch"].startswith("ResNet18")
    cfg = make_cfg(*overrides, "method=random", "eval.epochs=1", "eval.evals=1")
    result = build(cfg.task)(cfg)  # distil + evaluate: the teacher comes from the cache
    assert result["student/protocol"] == "soft_label"
    assert result["teacher/source"] == metrics["teacher/source"]
    cfg = make_cfg("task=train_teacher")
    with pytest.raises(UserError, match="task=train_teacher needs eval=soft_label"):
        build(cfg.task)(cfg)

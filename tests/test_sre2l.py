"""SRe2L's recover step (method=sre2l) with tiny BatchNorm observers on digits.

The BN statistics loss against numbers worked out by hand; one recover step lowers the
objective and keeps the pixels valid; seeded, batch-independent initial noise; an observer
without BatchNorm refused in one line (in-process and through run.py, exit 2); the run end to end
through the configs, read back by task=evaluate with the labels the observer gives its images.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from baselines.observer import Observer
from baselines.sre2l import BNStatistics, augment, bn_term, cosine_lr, crop_box
from ddapp.schemas import SRe2LSchema, from_schema
from ddapp.tasks import build
from ddcore.data.base import as_float
from ddcore.data.small import digits
from ddcore.errors import UserError
from ddcore.seeding import rng_for
from tests.distill import evaluate_folder
from tests.scores import assert_students_scored
from tests.test_rded import Normalize

ROOT = Path(__file__).resolve().parents[1]


def small_net(norm: str = "batch", classes: int = 10) -> nn.Module:
    make = (lambda c: nn.BatchNorm2d(c)) if norm == "batch" else (lambda c: nn.GroupNorm(c, c))
    return nn.Sequential(
        Normalize(0.25, 0.5),
        nn.Conv2d(1, 4, 3, padding=1),
        make(4),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1),
        make(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes),
    )


class FixedTeacher:
    """Stands in for eval.teacher.Teacher (``get``): a small net whose BN running statistics come
    from digits' train images."""

    def __init__(self, data, norm: str = "batch"):
        torch.manual_seed(0)
        self.model = small_net(norm, data.num_classes)
        self.model.train()
        with torch.no_grad():
            self.model(data.train.load(list(range(256))))
        self.model.eval()

    def get(self, data, trainer_factory=None, train_if_missing=True):
        return self.model, {"teacher/source": "test"}


@pytest.fixture(scope="module")
def data():
    return digits()


def method(data, norm="batch", **kwargs):
    return from_schema(SRe2LSchema, teacher=FixedTeacher(data, norm), **{"iterations": 5, **kwargs})


# -- (a) the BN statistics loss by hand -------------------------------------------------------------
def test_bn_loss_matches_a_hand_computed_case():
    """One BN layer, input values 1, 3 (image 0) and 5, 7 (image 1): mean 4, biased variance
    (9 + 1 + 1 + 9) / 4 = 5; running mean 1, running var 2 -> |4 - 1| + |5 - 2| = 6."""
    bn = nn.BatchNorm2d(1).eval()
    bn.running_mean.fill_(1.0)
    bn.running_var.fill_(2.0)
    x = torch.tensor([1.0, 3.0, 5.0, 7.0]).view(2, 1, 1, 2)
    assert float(bn_term(x, bn)) == pytest.approx(6.0)
    stats = BNStatistics([bn])
    with stats.hooked():
        bn(x)
    assert float(stats.loss(10.0)) == pytest.approx(60.0)  # the first layer weighted x10


def test_bn_loss_weights_the_first_layer_and_norms_over_channels():
    """Two layers, two channels each: the L2 norms over channels of the mean and variance gaps,
    summed with weights (10, 1), on a known batch."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.BatchNorm2d(2), nn.Conv2d(2, 2, 1, bias=False), nn.BatchNorm2d(2)).eval()
    first, second = net[0], net[2]
    first.running_mean.copy_(torch.tensor([0.5, -1.0]))
    first.running_var.copy_(torch.tensor([2.0, 0.5]))
    second.running_mean.copy_(torch.tensor([0.0, 0.3]))
    second.running_var.copy_(torch.tensor([1.0, 4.0]))
    x = torch.arange(16, dtype=torch.float32).view(2, 2, 2, 2) / 4

    def by_hand(features, bn):
        c = features.shape[1]
        values = features.transpose(0, 1).reshape(c, -1)  # channel -> its N*H*W values
        mean = values.sum(1) / values.shape[1]
        var = ((values - mean[:, None]) ** 2).sum(1) / values.shape[1]  # biased
        gap_mean = torch.sqrt(((mean - bn.running_mean) ** 2).sum())
        gap_var = torch.sqrt(((var - bn.running_var) ** 2).sum())
        return gap_mean + gap_var

    expected = 10 * by_hand(x, first) + by_hand(net[1](first(x)), second)
    stats = BNStatistics([first, second])
    with stats.hooked():
        net(x)
    assert float(stats.loss(10.0)) == pytest.approx(float(expected), rel=1e-6)
    net(x)  # hooks removed: nothing recorded outside ``hooked``
    assert stats.terms == {}


# -- (b) one recover step ---------------------------------------------------------------------------
def objective(method, observer, z, label, mean, std):
    """CE + r_bn * BN loss without augmentation (the recover loss at a fixed view)."""
    stats = BNStatistics(observer.batchnorms())
    with stats.hooked(), torch.no_grad():
        logits = observer.logits(z * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1))
        target = torch.full((len(z),), label)
        return float(F.cross_entropy(logits, target) + method.r_bn * stats.loss(method.first_bn_multiplier))


def test_one_recover_step_lowers_the_loss_and_keeps_pixels_valid(data):
    sre2l = method(data, crop=None, flip=False, jitter=0, lr=0.02)
    observer = sre2l.observer(data)
    mean, std = observer.normalization(1)
    assert mean.tolist() == [0.25] and std.tolist() == [0.5]  # the observer's own normalization
    z0 = torch.randn((4, 1, 16, 16), generator=torch.Generator().manual_seed(0))
    pixels0 = z0 * 0.5 + 0.25
    assert pixels0.min() < 0 and pixels0.max() > 1  # N(0, 1) in normalized space leaves [0, 1]
    low, high = -0.5, 1.5  # the valid pixels [0, 1] in normalized space
    start = objective(sre2l, observer, z0.clamp(low, high), 3, mean, std)
    z1 = sre2l.recover(observer, z0.clone(), 3, torch.Generator(), mean, std, iterations=1)
    pixels1 = z1 * 0.5 + 0.25
    assert pixels1.min() >= -1e-6 and pixels1.max() <= 1 + 1e-6  # clipped after the step
    assert objective(sre2l, observer, z1, 3, mean, std) < start
    assert not torch.equal(z1, z0.clamp(low, high))


def test_seeded_per_image_and_per_class(data):
    sre2l = method(data, iterations=2)
    first, info = sre2l.distill_class(data, 2, 2, 0)
    again, _ = sre2l.distill_class(data, 2, 2, 0)
    assert torch.equal(first, again) and first.shape == (2, 1, 16, 16)
    assert len(info["observer_loss"]) == 2  # the manifest's per-image list
    assert not torch.equal(first, sre2l.distill_class(data, 2, 2, 1)[0])  # another seed
    assert not torch.equal(first, sre2l.distill_class(data, 3, 2, 0)[0])  # another class
    # the initial noise of image i is its own: with no steps, batches of 1 give the same images
    zero = method(data, iterations=1, lr=1e-12)
    whole, _ = zero.distill_class(data, 2, 3, 0)
    split, _ = method(data, iterations=1, lr=1e-12, batch_size=1).distill_class(data, 2, 3, 0)
    assert torch.allclose(whole, split, atol=1e-6)


def test_augmentation_crop_flip_roll_are_seeded_and_keep_the_shape():
    x = torch.arange(2 * 16 * 16, dtype=torch.float32).view(2, 1, 16, 16)
    out = augment(x, rng_for(0, "a"), 16, (0.08, 1.0), True, 2)
    assert out.shape == x.shape and torch.equal(out, augment(x, rng_for(0, "a"), 16, (0.08, 1.0), True, 2))
    rolled = augment(x, rng_for(0, "b"), 16, None, False, 0)
    assert torch.equal(rolled, x)  # nothing drawn: the identity
    for key in range(20):
        top, left, h, w = crop_box(rng_for(key, "c"), 16, 16, (0.08, 1.0))
        assert 0 <= top and top + h <= 16 and 0 <= left and left + w <= 16
    assert cosine_lr(0.25, 0, 100) == 0.25 and cosine_lr(0.25, 50, 100) == pytest.approx(0.125)


def test_settings_auto_and_bad_values(data):
    import dataclasses

    sre2l = method(data, iterations="auto")
    assert sre2l.iterations_for(data) == 1000  # 16 px: the low-resolution count
    assert sre2l.iterations_for(dataclasses.replace(data, resolution=224)) == 4000
    assert sre2l.jitter_for(Observer(nn.Identity(), [0], 224, 3, "x")) == 32  # the official value
    assert sre2l.jitter_for(Observer(nn.Identity(), [0], 32, 3, "x")) == 4  # the official CIFAR value
    with pytest.raises(UserError, match=r"method.crop=\[0.0, 1.0\] must be \[low, high\]") as err:
        from_schema(SRe2LSchema, crop=(0.0, 1.0))  # the config check leaves crop to SRe2L: see patchsel
    assert "\n" not in str(err.value)


# -- (c) an observer without BatchNorm ---------------------------------------------------------------
def test_an_observer_without_batchnorm_is_one_line(data):
    sre2l = method(data, norm="group")
    with pytest.raises(
        UserError, match="has no BatchNorm2d layer.*eval/student@eval.teacher.model=resnet18_bn"
    ) as err:
        sre2l.validate(data, 2)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="method.observer=teacher uses the soft-label teacher"):
        from_schema(SRe2LSchema).validate(data, 2)


def test_run_py_refuses_an_observer_without_batchnorm_with_exit_2(tmp_path):
    """The soft-label teacher as a ConvNet (instance norm): refused before anything is written."""
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        "method=sre2l",
        "eval/student@eval.teacher.model=convnet",
        "logger=none",
        "trainer=cpu",
        "debug=tiny",
        f"hydra.run.dir={run_dir}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "no BatchNorm2d layer" in lines[0] and "resnet18_bn" in lines[0]
    assert "Traceback" not in proc.stderr and not (run_dir / "distilled").exists()


# -- (d) through the configs -------------------------------------------------------------------------
def test_config_defaults_and_checks(make_cfg):
    from ddapp.config_checks import check_config

    cfg = make_cfg("method=sre2l")
    assert cfg.eval._target_ == "eval.soft_label.SoftLabelProtocol"  # SRe2L relabels with a teacher
    assert cfg.eval.teacher.model.norm == "batch"  # the default teacher qualifies as observer
    assert (cfg.method.lr, list(cfg.method.betas), cfg.method.r_bn, cfg.method.first_bn_multiplier) == (
        0.25,
        [0.5, 0.9],
        0.01,
        10.0,
    )
    check_config(cfg)
    for override, message in [
        ("method.iterations=0", "method.iterations must be auto or an integer >= 1"),
        ("method.jitter=-1", "method.jitter must be auto or an integer >= 0"),
        ("method.r_bn=-0.1", "method.r_bn must be"),
        ("method.jitter=wide", "method.jitter must be auto or an integer >= 0"),
        ("method.betas=[0.5,1.0]", r"method.betas must be a list of 2 finite numbers in \[0, 1\)"),
        ("method.lr=0", "method.lr must be > 0"),
    ]:
        with pytest.raises(UserError, match=message):
            check_config(make_cfg("method=sre2l", override))


def test_tiny_run_end_to_end_read_back_by_task_evaluate(make_cfg, tmp_path, monkeypatch):
    """Distil with the (debug=tiny) soft-label teacher as observer, then task=evaluate reads the
    folder back: each image carries the label the observer recovered it for."""

    cfg = make_cfg("task=distill", "method=sre2l", "method.iterations=25", "seed=3")
    build(cfg.task)(cfg)
    folder = Path(cfg.paths.output_dir) / "distilled"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["method"] == "sre2l"
    assert sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) == sorted(
        manifest["classes"]
    )
    assert len(manifest["images"]) == 10 * cfg.ipc and all("observer_loss" in e for e in manifest["images"])

    metrics, distilled, data = evaluate_folder(make_cfg, monkeypatch, folder, tmp_path / "evaluate")
    assert metrics["method"] == "sre2l"
    assert_students_scored(metrics, len(data.test))
    assert distilled.labels.tolist() == [c for c in range(10) for _ in range(cfg.ipc)]
    teacher, _ = build(cfg.eval.teacher).get(data, None, train_if_missing=False)  # the observer
    with torch.no_grad():
        predicted = teacher(as_float(distilled.images))
    agree = (predicted.argmax(1) == distilled.labels).float().mean()
    # recovered for their class and read back under it: 0.45 here (debug=tiny's 2-epoch teacher,
    # 25 iterations, seed 3), against 0.1 by chance and about 0 with the labels shuffled
    assert agree >= 0.3

"""Reference points (full data, random subset) and DD-Ranking's HLR, IOR and LRS."""

import math
from functools import partial

import lightning.pytorch as pl
import pytest

import ddcore.distilled
from ddcore.data.small import digits
from ddcore.distilled import random_real_subset
from eval.hard_label import HardLabelProtocol
from eval.reference import hlr, ior, lrs
from eval.soft_label import SoftLabelProtocol
from eval.students import ConvNet
from eval.teacher import Teacher

CPU = partial(pl.Trainer, accelerator="cpu", devices=1)


def test_ddranking_formulas():
    assert hlr(0.9, 0.6) == pytest.approx(0.3) and ior(0.6, 0.5) == pytest.approx(0.1)
    a = 0.5 * 0.1 - 0.5 * 0.3
    assert lrs(0.3, 0.1) == pytest.approx((math.exp(a) - math.exp(-1)) / (math.e - math.exp(-1)))
    assert lrs(0.0, 1.0, w=1.0) == pytest.approx(1.0) and lrs(1.0, 0.0, w=0.0) == pytest.approx(0.0)


def test_hard_label_reference_points_are_computed_once(tmp_path, monkeypatch):
    data = digits()
    distilled = random_real_subset(data, ipc=2, seed=1)
    reference = {"enabled": True, "cache_dir": str(tmp_path), "full_epochs": 1, "acc": "final"}
    protocol = HardLabelProtocol(partial(ConvNet, width=8), epochs=2, evals=1, repeats=1, reference=reference)
    metrics = protocol.evaluate(distilled, data, ipc=2, seed=0, trainer_factory=CPU)
    full, rnd = metrics["reference/full_hard_acc"], metrics["reference/random_acc"]
    syn = metrics["student/final_acc_mean"]
    assert metrics["reference/distilled_hard_acc"] == syn
    assert metrics["ddranking/hlr"] == pytest.approx(full - syn)
    assert metrics["ddranking/ior"] == pytest.approx(syn - rnd)
    assert metrics["ddranking/lrs"] == pytest.approx(lrs(full - syn, syn - rnd))
    assert len(list(tmp_path.glob("digits/full-*.json"))) == 1
    assert len(list(tmp_path.glob("digits/random-*.json"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("recomputed a cached reference accuracy")

    monkeypatch.setattr(HardLabelProtocol, "train_real", fail)
    monkeypatch.setattr(ddcore.distilled, "random_real_subset", fail)
    again = HardLabelProtocol(
        partial(ConvNet, width=8), epochs=2, evals=1, repeats=1, reference=reference
    ).evaluate(distilled, data, 2, 0, CPU)
    assert (again["reference/full_hard_acc"], again["reference/random_acc"]) == (full, rnd)


def test_soft_label_reference_uses_the_hard_label_protocol_for_hlr(tmp_path):
    data = digits()
    distilled = random_real_subset(data, ipc=2, seed=1)
    teacher = Teacher(
        partial(ConvNet, width=8), cache_dir=str(tmp_path / "teachers"), train={"epochs": 1, "evals": 1}
    )
    protocol = SoftLabelProtocol(
        partial(ConvNet, width=8),
        teacher,
        epochs=2,
        evals=1,
        repeats=1,
        hard_label={"epochs": 2, "evals": 1},
        reference={"cache_dir": str(tmp_path / "ref"), "full_epochs": 1},
    )
    metrics = protocol.evaluate(distilled, data, ipc=2, seed=0, trainer_factory=CPU)
    assert metrics["reference/acc"] == "best"
    syn, syn_hard = metrics["student/best_acc_mean"], metrics["reference/distilled_hard_acc"]
    assert metrics["ddranking/hlr"] == pytest.approx(metrics["reference/full_hard_acc"] - syn_hard)
    assert metrics["ddranking/ior"] == pytest.approx(syn - metrics["reference/random_acc"])
    # the full-data reference is a hard-label run, cached like eval=hard_label's
    assert len(list((tmp_path / "ref" / "digits").glob("full-*.json"))) == 1

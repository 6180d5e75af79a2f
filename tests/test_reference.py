"""Reference points (full data, random subset) and DD-Ranking's HLR, IOR and LRS."""

import math
from functools import partial

import lightning.pytorch as pl
import pytest

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
    assert len(list(tmp_path.glob("digits/set-*.json"))) == 2  # the set and the random subset
    assert len(list(tmp_path.glob("digits/random-*.json"))) == 1  # the subset, by its indices

    trained = []
    evaluate_set = HardLabelProtocol.evaluate_set
    monkeypatch.setattr(HardLabelProtocol, "train_real", fail_recompute)
    monkeypatch.setattr(
        HardLabelProtocol,
        "evaluate_set",
        lambda self, *a, **k: trained.append(k) or evaluate_set(self, *a, **k),
    )
    again = HardLabelProtocol(
        partial(ConvNet, width=8), epochs=2, evals=1, repeats=1, reference=reference
    ).evaluate(distilled, data, 2, 0, CPU)
    assert (again["reference/full_hard_acc"], again["reference/random_acc"]) == (full, rnd)
    assert len(trained) == 1  # the set's own students; both references came from the cache


def fail_recompute(*args, **kwargs):
    raise AssertionError("recomputed a cached reference accuracy")


def test_a_random_set_is_its_own_random_reference(tmp_path, monkeypatch):
    """method=random's set is the random reference: its students train once, not twice."""
    data = digits()
    subset = random_real_subset(data, ipc=2, seed=0)
    trained = []
    evaluate_set = HardLabelProtocol.evaluate_set
    monkeypatch.setattr(
        HardLabelProtocol,
        "evaluate_set",
        lambda self, *a, **k: trained.append(k) or evaluate_set(self, *a, **k),
    )
    reference = {"cache_dir": str(tmp_path), "full_epochs": 1, "acc": "final"}
    protocol = HardLabelProtocol(partial(ConvNet, width=8), epochs=2, evals=1, repeats=1, reference=reference)
    metrics = protocol.evaluate(subset, data, ipc=2, seed=0, trainer_factory=CPU)
    assert metrics["reference/random_acc"] == metrics["student/final_acc_mean"]
    assert [k.get("prefix") for k in trained] == [None, "full"]  # no "random" students


def tiny_soft_label(tmp_path, reference: dict) -> SoftLabelProtocol:
    """Width-8 ConvNets, 2 epochs, 1 repeat; its hard-label protocol has the same settings."""
    teacher = Teacher(
        partial(ConvNet, width=8), cache_dir=str(tmp_path / "teachers"), train={"epochs": 1, "evals": 1}
    )
    return SoftLabelProtocol(
        partial(ConvNet, width=8),
        teacher,
        epochs=2,
        evals=1,
        repeats=1,
        hard_label={"epochs": 2, "evals": 1, "repeats": 1},
        reference=reference,
    )


def test_soft_label_reference_uses_the_hard_label_protocol_for_hlr(tmp_path):
    data = digits()
    distilled = random_real_subset(data, ipc=2, seed=1)
    protocol = tiny_soft_label(tmp_path, {"cache_dir": str(tmp_path / "ref"), "full_epochs": 1})
    metrics = protocol.evaluate(distilled, data, ipc=2, seed=0, trainer_factory=CPU)
    assert metrics["reference/acc"] == "best"
    syn, syn_hard = metrics["student/best_acc_mean"], metrics["reference/distilled_hard_acc"]
    assert metrics["ddranking/hlr"] == pytest.approx(metrics["reference/full_hard_acc"] - syn_hard)
    assert metrics["ddranking/ior"] == pytest.approx(syn - metrics["reference/random_acc"])
    # the full-data reference is a hard-label run, cached like eval=hard_label's
    assert len(list((tmp_path / "ref" / "digits").glob("full-*.json"))) == 1


def test_soft_label_hlr_reuses_the_hard_label_evaluation_of_the_same_set(tmp_path, monkeypatch):
    """A set evaluated with hard labels first (the same settings as the soft-label protocol's
    hard-label protocol) gives the soft-label run its HLR accuracy without training again."""
    data = digits()
    distilled = random_real_subset(data, ipc=2, seed=1)
    reference = {"cache_dir": str(tmp_path / "ref"), "full_epochs": 1}
    hard = HardLabelProtocol(partial(ConvNet, width=8), epochs=2, evals=1, repeats=1, reference=reference)
    hard_metrics = hard.evaluate(distilled, data, ipc=2, seed=0, trainer_factory=CPU)
    soft = tiny_soft_label(tmp_path, reference)
    assert soft.hard_label_protocol().describe() == hard.describe()
    monkeypatch.setattr(HardLabelProtocol, "evaluate_set", fail_recompute)
    metrics = soft.evaluate(distilled, data, ipc=2, seed=0, trainer_factory=CPU)
    assert metrics["reference/distilled_hard_acc"] == hard_metrics["student/best_acc_mean"]


def test_one_full_data_reference_for_every_ipc_schedule(tmp_path):
    """With full_epochs set, the set's own epochs (a schedule by IPC) do not split the cache."""
    data = digits()
    reference = {"cache_dir": str(tmp_path), "full_epochs": 1, "acc": "final"}
    for ipc, epochs in ((1, 3), (2, 2)):
        protocol = HardLabelProtocol(
            partial(ConvNet, width=8), epochs=epochs, evals=1, repeats=1, reference=reference
        )
        protocol.evaluate(random_real_subset(data, ipc, 1), data, ipc=ipc, seed=0, trainer_factory=CPU)
    assert len(list(tmp_path.glob("digits/full-*.json"))) == 1


def test_a_cached_random_reference_decodes_no_image(tmp_path, monkeypatch):
    """The random reference is looked up by the subset's indices before anything is decoded:
    at ImageNet-1K every rank used to decode the subset (30 GB as float at IPC 50) first."""
    data = digits()
    reference = {"cache_dir": str(tmp_path), "full_epochs": 1, "acc": "final"}
    protocol = HardLabelProtocol(partial(ConvNet, width=8), epochs=1, evals=1, repeats=1, reference=reference)
    first = protocol.reference.random_accuracy(protocol, data, 2, 0, CPU)
    decoded = []
    for name in ("load", "load_uint8"):
        original = getattr(data.train, name)
        monkeypatch.setattr(data.train, name, lambda *a, _f=original, **k: decoded.append(a) or _f(*a, **k))
    assert protocol.reference.random_accuracy(protocol, data, 2, 0, CPU) == first
    assert decoded == []

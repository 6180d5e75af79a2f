"""Defects that only show at paper scale (many GPUs, ImageNet-sized sets), tested small."""

from __future__ import annotations

import torch

from eval.student_module import ResumableCheckpoint


def fake_gpus(monkeypatch, count: int, current: int = 0):
    """torch.cuda as a machine with ``count`` GPUs would show it; records what is restored."""
    restored = []

    def set_all(states):
        if len(states) > count:
            raise RuntimeError("invalid device ordinal")  # what torch raises for a missing GPU
        restored.extend(states)

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
    monkeypatch.setattr(
        torch.cuda, "get_rng_state", lambda device="cuda": torch.full((4,), current, dtype=torch.uint8)
    )
    monkeypatch.setattr(
        torch.cuda,
        "get_rng_state_all",
        lambda: [torch.full((4,), i, dtype=torch.uint8) for i in range(count)],
    )
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_all)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append(state))
    return restored


def test_checkpoint_rng_holds_and_restores_only_the_current_device(monkeypatch):
    """A student checkpointed on an 8-GPU node resumes on a 1-GPU one: only this rank's device
    state is saved and restored (restoring all 8 crashed on fewer GPUs)."""
    fake_gpus(monkeypatch, count=8, current=3)
    state = ResumableCheckpoint("unused.ckpt", 1, {}).state_dict()
    assert torch.equal(state["cuda"], torch.full((4,), 3, dtype=torch.uint8))

    restored = fake_gpus(monkeypatch, count=1, current=0)
    ResumableCheckpoint("unused.ckpt", 1, {}).load_state_dict(state)
    assert len(restored) == 1 and torch.equal(restored[0], state["cuda"])


def test_checkpoint_rng_of_the_old_format_restores_the_current_device(monkeypatch):
    """Checkpoints written with one state per visible GPU still resume on fewer GPUs."""
    old = ResumableCheckpoint("unused.ckpt", 1, {}).state_dict()
    old["cuda"] = [torch.full((4,), i, dtype=torch.uint8) for i in range(8)]
    restored = fake_gpus(monkeypatch, count=2, current=1)
    ResumableCheckpoint("unused.ckpt", 1, {}).load_state_dict(old)
    assert len(restored) == 1 and torch.equal(restored[0], old["cuda"][1])


# -- host memory: sets stay uint8 until a batch needs floats ------------------------------------
def saved_set(tmp_path):
    from baselines.real import RandomReal
    from ddcore.data.small import digits
    from ddcore.distilled import random_real_subset
    from ddcore.sharding import distill_to_folder

    data = digits()
    distill_to_folder(RandomReal(), data, 3, 0, None, tmp_path / "set", {})
    return data, random_real_subset(data, ipc=3, seed=0), tmp_path / "set"


def test_a_set_read_back_is_uint8_and_students_train_on_it_without_a_copy(tmp_path):
    """At ImageNet-1K IPC 50 (224 px) a set is 7.5 GB as uint8 and 30 GB as float: read back,
    it stays uint8 (the PNGs' own values), and the students' bank is that very tensor."""
    from ddcore.distilled import load_complete, load_distilled
    from eval.batches import TrainSet

    data, subset, folder = saved_set(tmp_path)
    assert subset.images.dtype == torch.uint8  # the random real subset too
    for loaded in (load_complete(folder, data), load_distilled(folder, data)):
        assert loaded.images.dtype == torch.uint8
        assert torch.equal(loaded.images, subset.images)
        train = TrainSet.from_images(loaded.images, loaded.labels)
        assert train.images.data_ptr() == loaded.images.data_ptr()


def test_set_metrics_see_uint8_and_float_sets_alike(tmp_path):
    """Pixel features are in [0, 1] whatever the set's dtype (uint8 would give 0..255)."""
    from ddcore.data.base import as_float
    from ddcore.distilled import DistilledSet
    from eval.set_metrics import set_metrics

    data, subset, _ = saved_set(tmp_path)
    floats = DistilledSet(as_float(subset.images), subset.labels)
    a, b = set_metrics(subset, data, max_real=20), set_metrics(floats, data, max_real=20)
    assert torch.allclose(a.diversity, b.diversity) and torch.allclose(
        a.representativeness, b.representativeness
    )
    assert float(a.diversity.max()) < 20  # 16x16 pixels in [0, 1]: at most 16 apart


class CountingSource:
    """A file source stand-in that records which images were decoded."""

    def __init__(self, n: int):
        self.labels = torch.zeros(n, dtype=torch.long)
        self.requested: list[int] = []

    def __len__(self) -> int:
        return len(self.labels)

    def load_uint8(self, indices, resolution=None):
        self.requested += list(indices)
        return torch.zeros(len(indices), 1, 4, 4, dtype=torch.uint8)


def test_each_rank_checks_its_share_of_the_test_split_and_keeps_none():
    """Before distilling, the test split is checked for unreadable files by all ranks together
    (each its share) and held by none: ImageNet val is 7.5 GB as uint8 per rank otherwise."""
    from eval.batches import check_decodable

    source = CountingSource(10)
    assert check_decodable(source, rank=1, world_size=3) is None
    assert source.requested == [1, 4, 7]


def test_preload_gives_one_uint8_tensor_of_the_split():
    from eval.batches import preload

    source = CountingSource(600)
    images = preload(source, batch_size=256)
    assert images.shape == (600, 1, 4, 4) and images.dtype == torch.uint8
    assert source.requested == list(range(600))


DIGEST_PEAK = """
import resource, torch
from eval.records import tensor_digest
images = torch.ones(512 << 20, dtype=torch.uint8)  # 512 MiB, every page touched
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tensor_digest(images, torch.zeros(3, dtype=torch.long))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) >> 10)  # MiB
"""


def test_keying_students_by_their_set_copies_nothing():
    """Student records are keyed by a digest of the set: hashing it through ``tobytes()`` copied
    the whole set (7.5 GB at ImageNet-1K IPC 50) on every rank, and two ranks ran out of memory."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", DIGEST_PEAK], cwd=root, capture_output=True, text=True, check=True
    )
    assert int(out.stdout.split()[-1]) < 64  # MiB above the set itself (a copy: 512)


def test_a_long_epoch_reports_steps_with_rate_and_eta(caplog):
    """One epoch over ImageNet-1K at IPC 50 is 782 steps of minutes: progress comes within it."""
    import logging
    from types import SimpleNamespace

    from ddcore.progress import ProgressLog

    trainer = SimpleNamespace(
        max_steps=-1, max_epochs=2, num_training_batches=100, current_epoch=1, callback_metrics={}
    )
    progress = ProgressLog("student/rep0", every_s=10)
    progress.on_train_start(trainer, None)
    progress._start -= 30.0  # 30 s into the fit, the last report 15 s ago
    progress._last -= 15.0
    with caplog.at_level(logging.INFO, logger="ddcore.progress"):
        progress.on_train_batch_end(trainer, None, None, None, 49)
    assert "student/rep0: step 150/200 (5.0 steps/s, ETA 0m10s)" in caplog.text

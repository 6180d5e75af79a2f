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

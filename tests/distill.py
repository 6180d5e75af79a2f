"""Distil a whole set in a test through the framework's own path: the per-class driver
(``ddcore.sharding.distill_to_folder``) writes it to a temporary folder and reads it back."""

import tempfile
from pathlib import Path

from ddcore.class_writer import read_modes
from ddcore.distilled import DistilledSet
from ddcore.sharding import Shard, distill_to_folder


def distill_set(method, data, ipc: int, seed: int, generator=None) -> DistilledSet:
    """The set as a run writes it (8-bit PNGs), with the saved modes in ``stats["modes"]``."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "distilled"
        distilled = distill_to_folder(
            method, data, ipc, seed, generator, folder, {"method": method.name}, shard=Shard()
        )
        distilled.stats["modes"] = read_modes(folder, data)
    return distilled


def evaluate_folder(make_cfg, monkeypatch, folder: Path, out: Path, *overrides: str):
    """``task=evaluate`` on ``folder`` without reference students, as a user runs it: its
    metrics, and the set and the dataset it read (``ddapp.tasks.load_distilled``, spied on)."""
    from omegaconf import open_dict

    import ddapp.tasks
    from ddapp.jobs import build

    seen = {}
    original = ddapp.tasks.load_distilled

    def spy(path, data):
        seen["set"], seen["data"] = original(path, data), data
        return seen["set"]

    monkeypatch.setattr(ddapp.tasks, "load_distilled", spy)
    cfg = make_cfg(
        "task=evaluate", f"eval.distilled_dir={folder}", "eval.reference.enabled=false", *overrides
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return build(cfg.task)(cfg), seen["set"], seen["data"]

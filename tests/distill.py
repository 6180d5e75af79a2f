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

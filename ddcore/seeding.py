"""Explicit random generators derived from the run seed and a key (class index, repeat...).

Deriving per-class generators makes results independent of the order or the process in which
classes are processed.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *keys) -> int:
    digest = hashlib.sha256(":".join(map(str, (seed, *keys))).encode()).hexdigest()
    return int(digest[:15], 16)


def rng_for(seed: int, *keys) -> torch.Generator:
    """A CPU torch.Generator seeded from ``seed`` and ``keys``."""
    return torch.Generator().manual_seed(derive_seed(seed, *keys))

"""Typed schemas for method settings, registered in Hydra's ConfigStore.

Method yaml files list their schema first in ``defaults``, so a misspelt key
(``method.lamm=0.1``) or a wrong type (``method.t_sg=abc``) fails when the config is composed,
not an hour into a run. Range checks (lam >= 0, 0 <= t_sg <= steps) live in the constructors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from hydra.core.config_store import ConfigStore


@dataclass
class SamplingSchema:
    steps: int = 50                     # denoising steps
    sampler: str = "ddpm"               # ddpm | ddim
    cfg_scale: Optional[float] = None   # None: the generator's default
    batch_size: Optional[int] = None    # None: all IPC samples of a class in one batch


@dataclass
class UnguidedSchema(SamplingSchema):
    _target_: str = "mgd3.distiller.UnguidedSampling"


@dataclass
class MGD3Schema(SamplingSchema):
    _target_: str = "mgd3.distiller.MGD3"
    lam: float = 0.1                    # mode-guidance strength lambda
    t_sg: int = 25                      # stop guidance: guide while step index > t_sg
    kmeans_backend: str = "auto"        # auto | faiss | torch


@dataclass
class RandomRealSchema:
    _target_: str = "ddcore.real_selection.RandomReal"


def register() -> None:
    store = ConfigStore.instance()
    store.store(group="method", name="unguided_schema", node=UnguidedSchema)
    store.store(group="method", name="mgd3_schema", node=MGD3Schema)
    store.store(group="method", name="random_schema", node=RandomRealSchema)

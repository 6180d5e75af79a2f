"""Typed schemas for method settings, registered in Hydra's ConfigStore.

Method yaml files list their schema first in ``defaults``, so a misspelt key
(``method.lamm=0.1``) or a wrong type (``method.t_sg=abc``) fails when the config is composed,
not an hour into a run. Range and choice checks (lam >= 0, 0 <= t_sg <= steps, known injection
modes) live in the constructors, which raise one-line UserErrors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from hydra.core.config_store import ConfigStore


@dataclass
class SamplingSchema:
    steps: int = 50                     # denoising steps
    sampler: str = "ddpm"               # ddpm | ddim (eta = 0)
    cfg_scale: Optional[float] = None   # None: the generator's default
    batch_size: Optional[int] = None    # None: all IPC samples of a class in one batch


@dataclass
class LatentCacheSchema:
    latent_cache: bool = True                # keep real-image latents on disk across runs
    latent_cache_dir: Optional[str] = None   # set by the yaml to ${paths.cache_dir}/latents


@dataclass
class UnguidedSchema(SamplingSchema):
    _target_: str = "mgd3.distiller.UnguidedSampling"


@dataclass
class MGD3Schema(LatentCacheSchema, SamplingSchema):
    _target_: str = "mgd3.distiller.MGD3"
    lam: float = 0.1                    # mode-guidance strength lambda
    t_sg: int = 25                      # stop guidance: guide while step index > t_sg
    injection: str = "posterior_mean"   # posterior_mean (official code) | eps (paper eq. 6)
    mode_discovery: str = "kmeans"      # kmeans | closest_real | random_real | dbscan
    kmeans_backend: str = "auto"        # auto | faiss | torch
    dbscan_eps: Optional[float] = None  # None: median radius holding dbscan_min_samples points
    dbscan_min_samples: int = 5


@dataclass
class D4MSchema(LatentCacheSchema, SamplingSchema):
    _target_: str = "mgd3.distiller.D4M"
    strength: float = 0.7               # img2img: prototypes noised to 70% of the schedule
    kmeans_backend: str = "auto"


@dataclass
class RandomRealSchema:
    _target_: str = "ddcore.real_selection.RandomReal"


@dataclass
class FeatureSelectionSchema(LatentCacheSchema):
    space: str = "pixels"                       # pixels (no generator) | latents (generator's)
    feature_resolution: Optional[int] = None    # pixels: resize first; None = dataset resolution


@dataclass
class KMeansRealSchema(FeatureSelectionSchema):
    _target_: str = "ddcore.real_selection.KMeansReal"
    kmeans_backend: str = "auto"


@dataclass
class HerdingSchema(FeatureSelectionSchema):
    _target_: str = "ddcore.real_selection.Herding"


def register() -> None:
    from ddcore.result_logging import register_resolvers

    register_resolvers()  # ${dd.wandb_group:...} in conf/logger/wandb.yaml
    store = ConfigStore.instance()
    store.store(group="method", name="unguided_schema", node=UnguidedSchema)
    store.store(group="method", name="mgd3_schema", node=MGD3Schema)
    store.store(group="method", name="d4m_schema", node=D4MSchema)
    store.store(group="method", name="random_schema", node=RandomRealSchema)
    store.store(group="method", name="kmeans_real_schema", node=KMeansRealSchema)
    store.store(group="method", name="herding_schema", node=HerdingSchema)

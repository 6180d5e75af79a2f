"""Typed schemas for method settings, registered in Hydra's ConfigStore.

Method yaml files list their schema first in ``defaults``, so a misspelt key
(``method.lamm=0.1``) or a wrong type (``method.t_sg=abc``) fails when the config is composed,
not an hour into a run. Range and choice checks (lam >= 0, 0 <= t_sg <= steps, known injection
modes) live in the constructors, which raise one-line UserErrors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.utils import get_class
from omegaconf import II, OmegaConf

from ddcore.latent_cache import ENCODE_BATCH


@dataclass
class SamplingSchema:
    steps: int = 50  # denoising steps
    sampler: str = "ddpm"  # ddpm | ddim (eta = 0)
    cfg_scale: Optional[float] = None  # None: the generator's default
    batch_size: Optional[int] = None  # None: all samples of the classes sampled together
    class_batch: int = 1  # classes per denoiser batch (same images; > 1 fills a GPU at small IPC)
    timestep_spacing: str = "auto"  # auto (the generator's official grid) | linspace | leading | trailing
    x0_from: str = "cfg"  # x0_hat for guidance from: cfg (official) | cond


@dataclass
class LatentCacheSchema:
    latent_cache: bool = True  # keep real-image latents on disk across runs
    latent_cache_dir: Optional[str] = None  # set by the yaml to ${paths.cache_dir}/latents
    # images decoded and encoded per VAE call: its activations bound memory (~0.19 GB per 256 px
    # image in sd-vae-ft-mse's encoder), so a class is encoded in small batches
    latent_batch_size: int = ENCODE_BATCH
    # DataLoader workers decoding image files while the VAE encodes (SLURM_CPUS_PER_TASK - 1)
    latent_workers: int = II("dd.launch:workers")


@dataclass
class UnguidedSchema(SamplingSchema):
    _target_: str = "baselines.unguided.UnguidedSampling"


@dataclass
class MGD3Schema(LatentCacheSchema, SamplingSchema):
    _target_: str = "mgd3.distiller.MGD3"
    lam: float = 0.1  # mode-guidance strength lambda
    t_sg: int = 25  # stop guidance: guide while step index > t_sg
    injection: str = "posterior_mean"  # posterior_mean (official code) | eps (paper eq. 6) | x0
    # kmeans | closest_real | random_real | dbscan | agglomerative | divisive | divisive_levels
    mode_discovery: str = "kmeans"
    kmeans_backend: str = "auto"  # auto | faiss | torch
    dbscan_eps: Optional[float] = None  # None: median radius holding dbscan_min_samples points
    dbscan_min_samples: int = 5
    linkage: str = "ward"  # agglomerative: ward | average | complete | single
    divisive_criterion: str = "sse"  # divisive: split the leaf with the largest sse | var
    divisive_level: int = 2  # divisive_levels: first depth picked (1 = the root)
    divisive_tree_leaves: Optional[int] = None  # divisive_levels: leaves grown (None: ipc)
    centres: str = "centroid"  # hierarchical centres: centroid | closest_real


@dataclass
class ManifoldGDSchema(MGD3Schema):
    _target_: str = "manifoldgd.distiller.ManifoldGD"
    mode_discovery: str = "divisive_levels"  # the public scripts' default
    divisive_level: int = 6  # the public scripts' default level
    manifold_scale: float = 0.1  # manifold-term step length
    radius: float = 0.05  # cloud radius r (after the warm-up)
    bandwidth: float = 0.2  # tanh(min_dist / bandwidth) weight
    tangent_dim: int = 3  # tangent-plane dimension (< neighbours)
    neighbours: int = 12  # K nearest cloud points
    cloud_points: int = 300  # P cloud points per centre and step
    cloud_linspace_start: float = 0.1  # half the radii on linspace(start, r)
    warm_steps: int = 5  # radius warm-up steps
    max_mult: float = 2.0  # warm-up starts at r * max_mult
    radius_schedule: str = "exp"  # linear | cosine | exp


@dataclass
class D4MSchema(LatentCacheSchema, SamplingSchema):
    _target_: str = "baselines.d4m.D4M"
    strength: float = 0.7  # img2img: prototypes noised to 70% of the schedule
    kmeans_backend: str = "auto"


@dataclass
class RandomRealSchema:
    _target_: str = "baselines.real.RandomReal"


@dataclass
class FeatureSelectionSchema(LatentCacheSchema):
    space: str = "pixels"  # pixels (no generator) | latents (generator's)
    feature_resolution: Optional[int] = None  # pixels: resize first; None = dataset resolution


@dataclass
class KMeansRealSchema(FeatureSelectionSchema):
    _target_: str = "baselines.real.KMeansReal"
    kmeans_backend: str = "auto"


@dataclass
class HerdingSchema(FeatureSelectionSchema):
    _target_: str = "baselines.real.Herding"


@dataclass
class PatchSelectionSchema:
    _target_: str = "patchsel.distiller.PatchSelection"
    draws: int = 4  # noise/timestep draws per image (relevance expectation)
    t_min: float = 0.1  # t ~ U(t_min, t_max) of the training schedule
    t_max: float = 0.7
    batched_null: bool = True  # cond + null terms in one forward pass
    batch_size: int = 64  # denoiser rows per forward pass
    crop: str = "auto"  # auto (whole image when resolution <= low_res_max) | true | false
    image_size: int = 256  # scoring image side (short side resize + center crop)
    patch_size: int = 224  # patch window side
    low_res_max: int = 64
    features: str = "dift"  # dift | clip (needs clip_model, a local folder)
    dift_layer: str = "auto"  # denoiser module path; auto: up_blocks.1 / middle DiT block
    dift_t: int = 261  # DIFT timestep
    clip_model: Optional[str] = None
    clustering: bool = True  # False: top patches by relevance alone (ablation)
    clusters: int = 32  # M
    top_clusters: int = 10  # N
    tile_max_ipc: int = 10  # 4 patches tiled 2x2 per image up to this ipc
    images_per_class: Optional[int] = None  # score a random subset per class (None: all)
    score_seed: int = 0  # scoring noise seed, separate from the run seed
    prompt_template: str = "An image of {}"  # text-conditioned generators
    null_prompt: str = "An image of ."
    kmeans_backend: str = "auto"
    score_cache: bool = True  # one scoring pass serves every ipc / class subset
    score_cache_dir: Optional[str] = None


@dataclass
class RDEDSchema:
    _target_: str = "baselines.rded.RDED"
    observer: str = "teacher"  # teacher (eval.teacher) | folder with a timm/torchvision classifier
    observer_space: str = "imagenet1k"  # folder observers: imagenet1k (by wnid) | dataset (= label)
    observer_arch: Optional[str] = None  # folder observers: architecture if the folder does not say
    mipc: int = 300  # real images scored per class
    num_crop: int = 5  # random crops per image
    factor: str = "auto"  # patches per side: auto (1 up to 64 px, 2 above) | an integer >= 1
    scale: Any = (0.08, 1.0)  # crop area range (RandomResizedCrop)
    batch_size: int = 256  # crops per observer forward pass
    score_cache: bool = True
    score_cache_dir: Optional[str] = None
    teacher: Any = None  # injected by the yaml: ${oc.select:eval.teacher,null}
    classifier: Any = None  # injected by the yaml: the folder classifier loader
    trainer: Any = None  # injected by the yaml: ${trainer}


@dataclass
class SRe2LSchema:
    _target_: str = "baselines.sre2l.SRe2L"
    observer: str = "teacher"  # teacher (eval.teacher) | a classifier folder (with BatchNorm)
    observer_space: str = "imagenet1k"  # folder observers: imagenet1k (by wnid) | dataset (= label)
    observer_arch: Optional[str] = None  # folder observers: architecture if the folder does not say
    iterations: str = "auto"  # steps per batch: auto (1000 up to 64 px, 4000 above) | an integer >= 1
    lr: float = 0.25  # Adam, cosine to 0
    betas: Any = (0.5, 0.9)
    r_bn: float = 0.01  # BatchNorm statistics loss weight
    first_bn_multiplier: float = 10.0  # the first BatchNorm layer's weight in it
    jitter: str = "auto"  # largest roll (px of the observer's input): auto (side // 7) | an integer >= 0
    crop: Any = (0.08, 1.0)  # RandomResizedCrop area range each iteration (null: none)
    flip: bool = True  # random horizontal flip each iteration
    batch_size: int = 100  # images of a class optimised together
    teacher: Any = None  # injected by the yaml: ${oc.select:eval.teacher,null}
    classifier: Any = None  # injected by the yaml: the folder classifier loader
    trainer: Any = None  # injected by the yaml: ${trainer}


@dataclass
class MinimaxFinetuneSchema:  # conf/method/minimax.yaml; the official recipe (baselines/minimax.py)
    epochs: Optional[int] = 8  # passes over every train image of the chunk
    steps: Optional[int] = 12000  # cap: the official script samples the step-12,000 checkpoint
    batch_size: int = 8
    lr: float = 1.0e-3
    ema_decay: float = 0.9999
    label_dropout: float = 0.1
    flip: str = "auto"  # auto (the dataset's hflip) | true | false
    max_minutes: Optional[float] = None
    checkpoint_every: int = 500  # resume points of a killed fine-tune
    seed: int = 0


@dataclass
class MinimaxSchema(LatentCacheSchema, SamplingSchema):
    _target_: str = "baselines.minimax.Minimax"
    lambda_r: float = 0.002  # representativeness weight
    lambda_d: float = 0.008  # diversity weight
    memory_size: int = 64  # per-class FIFO memories (real latents, x0 predictions)
    chunk_classes: int = 20  # classes per fine-tune (ImageNet-100/1K: one per 20 classes)
    finetune: MinimaxFinetuneSchema = field(default_factory=MinimaxFinetuneSchema)
    cache_dir: Optional[str] = None
    generator_target: Optional[str] = None  # ${generator._target_}: unsupported ones refused at once
    trainer_kwargs: Optional[dict] = None
    overrides: Optional[dict] = None  # debug=tiny: ${oc.select:debug.minimax,null}


def launch(fact: str) -> int:
    """``${dd.launch:nodes}``, ``${dd.launch:workers}``: what the launcher gave this process.

    nodes: machines of the job (torchrun: WORLD_SIZE / LOCAL_WORLD_SIZE; a submitit SLURM job:
    its nodes, hydra.launcher.nodes); 1 for a single process. workers: DataLoader workers for
    the CPUs SLURM reserved for this task (SLURM_CPUS_PER_TASK, hydra.launcher.cpus_per_task),
    one left to the process itself; 0 without a reservation (a shared or small machine, where
    decoding in the process is the safe default: set eval.num_workers to use more).
    """
    import os

    env = os.environ
    if fact == "nodes":
        if "WORLD_SIZE" in env and "LOCAL_WORLD_SIZE" in env:
            return max(1, int(env["WORLD_SIZE"]) // max(1, int(env["LOCAL_WORLD_SIZE"])))
        if env.get("SUBMITIT_EXECUTOR") == "slurm":
            return int(env.get("SLURM_JOB_NUM_NODES", env.get("SLURM_NNODES", 1)))
        return 1
    if fact == "workers":
        return max(0, int(env.get("SLURM_CPUS_PER_TASK", 1)) - 1)
    raise ValueError(f"dd.launch knows nodes and workers, not {fact!r}")


def schema_settings(schema: type, **settings) -> dict:
    """A method's settings outside a composed config (tests, experiments/gpu_check.py): the
    defaults ``schema`` declares, the one place they are written, with ``settings`` over them
    (its ``_target_`` left out)."""
    if not OmegaConf.has_resolver("dd.launch"):  # latent_workers: ${dd.launch:workers}
        register()
    merged = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(schema), settings), resolve=True)
    merged.pop("_target_", None)
    return merged


def from_schema(schema: type, **settings):
    """The method ``schema._target_`` names, built from ``schema_settings``; settings that are
    objects rather than config values (a teacher, a loader) are passed to it as they are."""
    plain = (str, int, float, bool, type(None), list, tuple, dict)
    objects = {k: v for k, v in settings.items() if not isinstance(v, plain)}
    values = {k: v for k, v in settings.items() if k not in objects}
    return get_class(schema._target_)(**{**schema_settings(schema, **values), **objects})


def register() -> None:
    from ddapp.result_logging import register_resolvers

    register_resolvers()  # ${dd.wandb_group:...} in conf/logger/wandb.yaml
    OmegaConf.register_new_resolver("dd.launch", launch, replace=True)  # conf/trainer, conf/eval
    store = ConfigStore.instance()
    store.store(group="method", name="unguided_schema", node=UnguidedSchema)
    store.store(group="method", name="mgd3_schema", node=MGD3Schema)
    store.store(group="method", name="manifoldgd_schema", node=ManifoldGDSchema)
    store.store(group="method", name="d4m_schema", node=D4MSchema)
    store.store(group="method", name="random_schema", node=RandomRealSchema)
    store.store(group="method", name="kmeans_real_schema", node=KMeansRealSchema)
    store.store(group="method", name="herding_schema", node=HerdingSchema)
    store.store(group="method", name="patchsel_schema", node=PatchSelectionSchema)
    store.store(group="method", name="minimax_schema", node=MinimaxSchema)
    store.store(group="method", name="rded_schema", node=RDEDSchema)
    store.store(group="method", name="sre2l_schema", node=SRe2LSchema)

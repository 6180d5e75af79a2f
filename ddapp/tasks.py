"""Tasks that ``run.py`` dispatches to (``task=run|distill|evaluate|train_generator``).

Each task validates everything it can before it writes anything, so bad input costs seconds
and leaves no half-written run. Outputs of a run directory:

    distilled/<class_id>/<i:06d>.png   distilled/manifest.json
    metrics.json                       figures/grid.png
"""

from __future__ import annotations

import contextlib
import functools
import logging
import subprocess
import sys
import time
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ddapp.figures import save_grid
from ddapp.result_logging import Report, log_results, offline_unless_reachable, report_run
from ddcore.data.base import ImageClassificationData, hold_out_validation
from ddcore.data.folders import check_headers
from ddcore.distilled import DistilledSet, load_distilled, read_manifest
from ddcore.distributed import init_process_group, launcher_shard, main_first, team
from ddcore.errors import CacheUnreadable, UserError
from ddcore.files import write_json
from ddcore.sharding import bind_device, check_before_loading, current_shard, distill_to_folder
from eval.batches import check_decodable

log = logging.getLogger(__name__)


# -- building blocks --------------------------------------------------------------------------
def build(node, **kwargs):
    """``hydra.utils.instantiate``, with our UserErrors passed through unwrapped.

    Runtime objects (the dataset) are passed after instantiation: given to ``instantiate``
    directly, a dataclass would be merged into the config and arrive as a DictConfig.
    """
    try:
        if kwargs:
            return instantiate(node, _partial_=True)(**kwargs)
        return instantiate(node)
    except (InstantiationException, UserError) as exc:
        if isinstance(exc, UserError):
            raise
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def resolve_device(accelerator: str) -> torch.device:
    """The torch device for non-Lightning work (sampling), from ``trainer.accelerator``."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("trainer=gpu but no CUDA device is visible (use trainer=cpu)")
        return torch.device("cuda")
    return torch.device("cpu")


def git(*args: str) -> str | None:
    """``git <args>``'s output in the code's folder; None outside git (or without git)."""
    try:
        return subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None


def git_commit() -> str:
    return git("rev-parse", "HEAD") or "unknown"


def git_dirty() -> bool | str:
    """Whether the code tree differs from ``git_commit`` (tracked changes or new files), so a
    result is not taken for that commit's; "unknown" outside git."""
    status = git("status", "--porcelain")
    return "unknown" if status is None else bool(status)


def output_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


def check_ipc(ipc: int) -> int:
    if not isinstance(ipc, int) or ipc <= 0:
        raise UserError(f"ipc must be a positive integer, got {ipc!r} (e.g. ipc=10)")
    return ipc


def resolved_config(cfg: DictConfig) -> dict:
    """The job's config as plain data (without the ``hydra`` node tests compose in)."""
    keys = [k for k in cfg.keys() if k != "hydra"]
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True)


def make_logger(cfg: DictConfig):
    """The logger run of the job (rank 0's: one run however many processes)."""
    return build(cfg.logger) if cfg.get("logger") and current_shard().is_main else None


def numeric(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


# -- several processes, devices -----------------------------------------------------------------
def is_ddp(trainer_cfg) -> bool:
    return "ddp" in str((trainer_cfg or {}).get("strategy", ""))


def trainer_device_count(trainer_cfg) -> int:
    """How many devices (so processes) Lightning would train one student on."""
    devices, accelerator = trainer_cfg.get("devices", "auto"), str(trainer_cfg.get("accelerator", "auto"))
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return len(devices)
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if str(devices) in ("-1", "auto"):
        return torch.cuda.device_count() if gpu else 1
    return int(str(devices).count(",") + 1 if isinstance(devices, str) and "," in devices else devices)


def check_accelerator(trainer_cfg) -> None:
    """A GPU trainer on a machine without a visible CUDA device fails before any work, for
    every method (not only those that sample on the device), naming the trainer chosen."""
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        name = "trainer=ddp" if is_ddp(trainer_cfg) else "trainer=gpu"
        raise UserError(
            f"{name} (trainer.accelerator={accelerator}) but no CUDA device is visible "
            "(use trainer=cpu, or run on a GPU machine)"
        )


def check_launch(cfg: DictConfig) -> None:
    """trainer=ddp runs one process per device, started by a launcher: Lightning must never
    re-execute run.py itself (each child would distil again, and start its own sweep). A GPU
    trainer needs a visible device (``check_accelerator``)."""
    trainer = cfg.get("trainer") or {}
    check_accelerator(trainer)
    if not is_ddp(trainer) or launcher_shard().world_size > 1:
        return
    n = trainer_device_count(trainer)
    if n > 1:
        raise UserError(
            f"trainer=ddp trains each student over {n} devices, one process each: launch it as "
            f"torchrun --standalone --nproc_per_node={n} run.py <overrides>, or with "
            f"hydra/launcher=slurm hydra.launcher.tasks_per_node={n} -m (README: Running on a cluster)"
        )


def set_tf32(enabled: bool) -> None:
    """TF32 for fp32 matmuls and convolutions on a GPU (``tf32``); nothing on a CPU."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
        torch.backends.cudnn.allow_tf32 = bool(enabled)


def rank_trainer(trainer_factory, shard):
    """Students of this rank on its own GPU (``cuda:<local rank>``) when the ranks of a job train
    students of their own; DDP (one student over all ranks) and CPUs are left as configured."""
    keywords = getattr(trainer_factory, "keywords", {})
    if shard.world_size == 1 or is_ddp(keywords) or keywords.get("accelerator") not in ("gpu", "cuda"):
        return trainer_factory
    return functools.partial(trainer_factory, devices=[shard.local_rank % max(1, torch.cuda.device_count())])


def keeps_freed_memory(cfg) -> bool:
    """``allocator.keep_freed``: true, false, or auto = on for CPU training, where every batch
    otherwise page-faults its activations in afresh (``ddcore.compat.keep_freed_memory``)."""
    setting = (cfg.get("allocator") or {}).get("keep_freed", "auto")
    if setting == "auto":
        return str((cfg.get("trainer") or {}).get("accelerator", "cpu")) == "cpu"
    return bool(setting)


@contextlib.contextmanager
def job(cfg: DictConfig):
    """What every task runs in: the launch checked, TF32 and the allocator as set, and, with
    several processes, this rank shown alive to the others (``ddcore.distributed.team``)."""
    from ddcore.compat import keep_freed_memory

    check_launch(cfg)
    offline_unless_reachable(cfg)  # wandb online without a network: offline, not a 95 s hang
    init_process_group()  # a submitit task (run.py's __main__ joined it already under torchrun)
    set_tf32(cfg.get("tf32", True))
    keep_freed_memory(keeps_freed_memory(cfg))
    timeout_s = (cfg.get("cluster") or {}).get("timeout_s")
    with team(output_dir(cfg) / ".ranks", timeout_s):
        yield


# -- stages -----------------------------------------------------------------------------------
def prepare_distillation(cfg: DictConfig, check_data=None):
    """Data, method and (if needed) generator, all validated; nothing written yet.
    ``check_data(data)`` runs before the generator is loaded or trained."""
    ipc = check_ipc(cfg.ipc)
    method = build(cfg.method)
    full: ImageClassificationData = build(cfg.dataset)
    data = scored_split(cfg, full)
    log.info(f"dataset {data.name}: {data.description or len(data.train)}")
    method.validate(data, ipc)
    check_headers(data.train)  # a file that is not an image fails now, not after distilling
    if check_data is not None:
        check_data(data)
    check_run_folder(cfg, data, method)
    generator = None
    if method.uses_generator:
        device = bind_device(resolve_device(cfg.trainer.accelerator))  # cuda:<local rank>
        # rank 0 first: a generator trained into the cache is trained once, then read
        generator = main_first("generator", lambda: build_generator(cfg, full)).to(device)
        method.check_generator(generator, data)  # e.g. a text model needs class names
    return data, method, generator


def scored_split(cfg: DictConfig, data: ImageClassificationData) -> ImageClassificationData:
    """The data as methods and students see it: with ``score_on=validation``, a held-out share
    of the train split replaces the test split (``hold_out_validation``)."""
    if cfg.get("score_on", "test") != "validation":
        return data
    return hold_out_validation(data, cfg.validation.fraction, cfg.validation.seed)


def build_generator(cfg: DictConfig, data):
    """The generator; a cached one whose files cannot be read (``CacheUnreadable``, raised where
    they are read) is a one-line error that says how to train it again, not a traceback from
    deep inside diffusers."""
    try:
        return build(cfg.generator, data=data)
    except CacheUnreadable as exc:
        raise UserError(
            f"the cached generator {cfg.generator.get('name')} under "
            f"{cfg.generator.get('cache_dir')} cannot be read ({exc.reason}): rerun with "
            "generator.retrain=true to train it again"
        ) from exc


def manifest_base(cfg: DictConfig, data, method, generator) -> dict:
    return {
        "method": method.name,
        "dataset": data.name,
        "ipc": cfg.ipc,
        "seed": cfg.seed,
        "generator": getattr(generator, "name", None),
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "config": resolved_config(cfg),
    }


def check_run_folder(cfg: DictConfig, data, method) -> None:
    """A run folder that another process writes, or that holds classes, with other settings is
    refused now, before the generator is loaded or trained (``ddcore.sharding``)."""
    check_before_loading(
        output_dir(cfg) / "distilled",
        data,
        manifest_base(cfg, data, method, None),
        cfg.get("sample_precision"),
        method.uses_generator,
    )


def distill(cfg: DictConfig, data, method, generator) -> tuple[DistilledSet, Path]:
    manifest = manifest_base(cfg, data, method, generator)
    folder = output_dir(cfg) / "distilled"
    # classes sharded over ranks (torchrun/SLURM), written atomically; a rerun resumes
    distilled = distill_to_folder(
        method, data, cfg.ipc, cfg.seed, generator, folder, manifest, precision=cfg.get("sample_precision")
    )
    if current_shard().is_main:
        save_grid(distilled, data, output_dir(cfg) / "figures" / "grid.png")
        log.info(f"distilled set written to {folder}")
    return distilled, folder


def run_metrics(cfg: DictConfig, method, data, distilled: DistilledSet, generator) -> dict:
    """What every job's metrics.json starts with: what ran, and the distillation's numbers."""
    return {
        "method": method.name,
        "dataset": data.name,
        "ipc": cfg.ipc,
        "seed": cfg.seed,
        **distill_metrics(distilled, generator),
    }


def distill_metrics(distilled: DistilledSet, generator) -> dict:
    seconds = distilled.stats.get("seconds", 0.0)
    metrics = {
        "distill/seconds": round(seconds, 2),
        "distill/seconds_per_image": round(seconds / max(1, len(distilled)), 4),
        "distill/images": len(distilled),
    }
    meta_sample_acc = getattr(generator, "sample_accuracy", None)
    if meta_sample_acc is not None:
        metrics["generator/sample_accuracy"] = meta_sample_acc
    if getattr(generator, "sample_warning", None):  # samples mostly off-class (self_trained.py)
        metrics["generator/warning"] = generator.sample_warning
    return metrics


def evaluate(cfg: DictConfig, distilled: DistilledSet, data, logger, protocol=None) -> dict:
    """The students of the set (and of the reference points), each trained once: recorded in
    the run folder (a rerun resumes), dealt over the ranks of a multi-process job."""
    protocol = protocol or build(cfg.eval)
    shard = current_shard()
    protocol.record_in(output_dir(cfg), shard, together=is_ddp(cfg.trainer))
    trainer_factory = rank_trainer(build(cfg.trainer), shard)
    metrics = protocol.evaluate(distilled, data, cfg.ipc, cfg.seed, trainer_factory, logger)
    return {"set/digest": distilled.digest(), **metrics}  # which jobs' sets are the same images


def report(cfg: DictConfig, data, distilled: DistilledSet, generator, metrics: dict) -> Report | None:
    """Set metrics (merged into ``metrics``) and the figures/ of a run (rank 0 only)."""
    if not current_shard().is_main:
        return None
    result = report_run(
        output_dir(cfg),
        data,
        distilled,
        generator=generator,
        histories=metrics.get("student/histories"),
        seed=cfg.get("seed", 0),
        **cfg.get("report", {}),
    )
    metrics.update(result.metrics)
    return result


def finish(cfg: DictConfig, metrics: dict, logger, result: Report | None = None) -> dict:
    """Write metrics.json and log numbers, figures and tables (rank 0 only)."""
    if not current_shard().is_main:
        return metrics
    write_json(output_dir(cfg) / "metrics.json", metrics)
    log_results(
        logger,
        metrics,
        result.per_class if result else None,
        result.figures if result else None,
        config=resolved_config(cfg),
    )
    summary = {k: v for k, v in numeric(metrics).items() if k.startswith("student/") and "acc" in k}
    if summary:
        log.info("result: " + ", ".join(f"{k}={v:.4f}" for k, v in summary.items()))
    return metrics


# -- tasks --------------------------------------------------------------------------------
def run_experiment(cfg: DictConfig) -> dict:
    """Distill, then evaluate the distilled set (the default task); with
    ``eval.distilled_dir=<folder>`` evaluate that folder instead (any class-per-folder set)."""
    if cfg.eval.get("distilled_dir"):
        return evaluate_only(cfg)
    with job(cfg):
        return _run_experiment(cfg)


def _run_experiment(cfg: DictConfig) -> dict:
    protocol = build(cfg.eval)  # fail on a bad eval config before spending time on distillation

    def check_test(data) -> None:  # before the generator: an unreadable test file fails now
        check_test_split(data)
        shard = current_shard()  # each rank decodes its share and keeps none of it
        check_decodable(data.test, shard.rank, shard.world_size, protocol.num_workers)

    data, method, generator = prepare_distillation(cfg, check_test)
    trainer_factory = rank_trainer(build(cfg.trainer), current_shard())
    # soft labels: teacher loaded + checked now (trained on rank 0 first when missing)
    main_first("teacher", lambda: protocol.prepare(data, cfg.seed, trainer_factory))
    logger = make_logger(cfg)
    distilled, _ = distill(cfg, data, method, generator)
    metrics = run_metrics(cfg, method, data, distilled, generator)
    metrics.update(evaluate(cfg, distilled, data, logger, protocol))
    return finish(cfg, metrics, logger, report(cfg, data, distilled, generator, metrics))


def distill_only(cfg: DictConfig) -> dict:
    with job(cfg):
        return _distill_only(cfg)


def _distill_only(cfg: DictConfig) -> dict:
    data, method, generator = prepare_distillation(cfg)
    logger = make_logger(cfg)
    distilled, _ = distill(cfg, data, method, generator)
    metrics = run_metrics(cfg, method, data, distilled, generator)
    return finish(cfg, metrics, logger, report(cfg, data, distilled, generator, metrics))


def check_test_split(data) -> None:
    """The test split has images, only of the run's classes, and of every one of them."""
    labels = data.test.labels
    if len(labels) == 0:
        raise UserError(f"{data.name} has no test images (add a val/ or test/ split)")
    if int(labels.min()) < 0 or int(labels.max()) >= data.num_classes:
        raise UserError(
            f"{data.name}: test labels lie outside the {data.num_classes} train "
            "classes (the test split must use the train split's classes)"
        )
    counts = torch.bincount(labels, minlength=data.num_classes)
    empty = [data.class_ids[c] for c in range(data.num_classes) if counts[c] == 0]
    if empty:
        raise UserError(
            f"{data.name}: {len(empty)} of {data.num_classes} classes have no test "
            f"images, first {empty[0]!r} (give every train class test images, or "
            "remove the class from train/)"
        )


def distilled_ipc(distilled, data, folder) -> int:
    """The ipc of an existing set: its largest class. ``task=evaluate`` ignores the ``ipc``
    setting, so a class of another size is named here with the fix that applies (classes with
    no images are left to ``check_distilled``'s message)."""
    counts = distilled.per_class_counts(data.num_classes)
    ipc = max(counts)
    off = [(data.class_ids[i], c) for i, c in enumerate(counts) if 0 < c != ipc]
    if off:
        raise UserError(
            f"{folder}: class {off[0][0]!r} has {off[0][1]} images, others {ipc} ({len(off)} "
            "classes differ; task=evaluate takes ipc from the folder, so give every class "
            "the same number of images)"
        )
    return ipc


def evaluate_only(cfg: DictConfig) -> dict:
    """Evaluate an existing distilled folder (``eval.distilled_dir=<folder>``)."""
    with job(cfg):
        return _evaluate_only(cfg)


def _evaluate_only(cfg: DictConfig) -> dict:
    folder = cfg.eval.get("distilled_dir")
    if not folder:
        raise UserError("task=evaluate needs eval.distilled_dir=<folder of class folders>")
    data = scored_split(cfg, build(cfg.dataset))
    check_test_split(data)
    distilled = load_distilled(Path(folder), data)
    ipc = distilled_ipc(distilled, data, folder)
    manifest = read_manifest(Path(folder))
    logger = make_logger(cfg)
    OmegaConf.update(cfg, "ipc", ipc, force_add=True)
    metrics = {
        "method": manifest.get("method", "external"),
        "dataset": data.name,
        "ipc": ipc,
        "distilled_dir": str(folder),
        **evaluate(cfg, distilled, data, logger),
    }
    return finish(cfg, metrics, logger, report(cfg, data, distilled, None, metrics))


def train_generator(cfg: DictConfig, retrain: bool = True) -> dict:
    """Train the self-trained generator for this dataset + config into the cache."""
    if "load_or_train" not in str(cfg.generator.get("_target_", "")):
        raise UserError(
            f"generator {cfg.generator.get('name')} is not trained by this framework "
            "(task=train_generator works with generator=dit_tiny, unet_tiny or ldm_tiny)"
        )
    data = build(cfg.dataset)
    generator = build(cfg.generator, data=data, retrain=retrain)
    metrics = {
        "dataset": data.name,
        "generator": generator.name,
        "generator/folder": str(generator.folder),
        **generator.train_meta,
    }
    if getattr(generator, "sample_warning", None):
        metrics["generator/warning"] = generator.sample_warning
    return finish(cfg, metrics, make_logger(cfg))


def train_vae(cfg: DictConfig, retrain: bool = True) -> dict:
    """Train the latent generator's VAE (``generator.vae``, e.g. generator=ldm_tiny) into the
    cache; its reconstruction error and scaling factor go to metrics.json."""
    from ddcore.generators.vae import load_or_train_vae

    settings = cfg.generator.get("vae")
    if not settings:
        raise UserError(
            f"generator {cfg.generator.get('name')} has no VAE of its own (task=train_vae "
            "works with a latent generator such as generator=ldm_tiny)"
        )
    data = build(cfg.dataset)
    overrides = cfg.generator.get("overrides")  # debug=tiny replaces the settings wholesale
    overrides = OmegaConf.to_container(overrides, resolve=True) if overrides else {}
    plain = overrides.get("vae") or OmegaConf.to_container(settings, resolve=True)
    _, meta = load_or_train_vae(
        data,
        cache_dir=str(Path(cfg.generator.cache_dir) / "vaes"),
        retrain=retrain,
        trainer_kwargs=OmegaConf.to_container(cfg.generator.trainer_kwargs, resolve=True),
        **plain,
    )
    metrics = {
        "dataset": data.name,
        "generator": cfg.generator.get("name"),
        **{f"vae/{k}": v for k, v in meta.items() if isinstance(v, (int, float))},
    }
    return finish(cfg, metrics, make_logger(cfg))


def quiet_lightning() -> None:
    """Lightning sets its loggers to INFO with their own handler when imported, which repeats
    every line through Hydra's handler; our ProgressLog lines say what matters."""
    import lightning.pytorch  # noqa: F401  (import first: it resets the levels on import)

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def close_loggers() -> None:
    """Finish the wandb run if one is open, so each multirun job gets its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()

"""The tasks ``conf/task/*.yaml`` point at (``task=run|distill|evaluate|train_generator|
train_vae``); each reads top to bottom from the stages in ``ddapp.stages`` and the job machinery
in ``ddapp.jobs``. ``task=train_teacher`` is in ``eval_tasks.py``, ``task=check_generator`` in
``check_generator.py``."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ddapp.devices import rank_trainer
from ddapp.jobs import build, finish, job, make_logger
from ddapp.stages import (
    check_test_split,
    distill,
    evaluate,
    prepare_distillation,
    report,
    run_metrics,
    scored_split,
)
from ddcore.distilled import load_distilled, read_manifest
from ddcore.distributed import main_first
from ddcore.errors import UserError
from ddcore.sharding import current_shard
from eval.batches import check_decodable


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
    """Distill only: the set, its manifest and figures; no student is trained."""
    with job(cfg):
        return _distill_only(cfg)


def _distill_only(cfg: DictConfig) -> dict:
    data, method, generator = prepare_distillation(cfg)
    logger = make_logger(cfg)
    distilled, _ = distill(cfg, data, method, generator)
    metrics = run_metrics(cfg, method, data, distilled, generator)
    return finish(cfg, metrics, logger, report(cfg, data, distilled, generator, metrics))


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

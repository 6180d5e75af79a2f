"""The stages the distill/run/evaluate tasks are made of, each validated before anything is
written: prepare (data, method, generator), distill (the set into the run folder), evaluate
(the students), report (set metrics, figures). Outputs of a run directory:

    distilled/<class_id>/<i:06d>.png   distilled/manifest.json
    metrics.json                       figures/grid.png
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from ddapp.devices import is_ddp, rank_trainer, resolve_device
from ddapp.figures import save_grid
from ddapp.jobs import build, output_dir
from ddapp.manifest import manifest_base
from ddapp.result_logging import Report, report_run
from ddcore.data.base import ImageClassificationData, hold_out_validation
from ddcore.data.folders import check_headers
from ddcore.distilled import DistilledSet
from ddcore.distributed import main_first
from ddcore.errors import CacheUnreadable, StorageError, UserError
from ddcore.sharding import bind_device, check_before_loading, current_shard, distill_to_folder

log = logging.getLogger(__name__)


# -- prepare ----------------------------------------------------------------------------------
def check_ipc(ipc: int) -> int:
    if not isinstance(ipc, int) or ipc <= 0:
        raise UserError(f"ipc must be a positive integer, got {ipc!r} (e.g. ipc=10)")
    return ipc


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


def build_generator(cfg: DictConfig, data):
    """The generator; a cached one whose files cannot be read (``CacheUnreadable``, raised where
    they are read) is a one-line error that says how to train it again, not a traceback from
    deep inside diffusers."""
    try:
        return build(cfg.generator, data=data)
    except CacheUnreadable as exc:
        raise StorageError(
            f"the cached generator {cfg.generator.get('name')} under "
            f"{cfg.generator.get('cache_dir')} cannot be read ({exc.reason}): rerun with "
            "generator.retrain=true to train it again"
        ) from exc


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


# -- distill ----------------------------------------------------------------------------------
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


# -- evaluate and report ----------------------------------------------------------------------
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

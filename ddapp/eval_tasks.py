"""Evaluation tasks that ``run.py`` dispatches to: ``task=train_teacher``."""

from __future__ import annotations

import shutil
from pathlib import Path

from omegaconf import DictConfig

from ddcore.errors import UserError


def train_teacher(cfg: DictConfig, retrain: bool = True) -> dict:
    """Train the soft-label protocol's teacher on the full real data into the teacher cache
    (later soft-label runs load it) and copy it to ``<run>/checkpoints/teacher.pt``."""
    from ddapp.devices import check_launch
    from ddapp.jobs import build, finish, make_logger, output_dir
    from ddapp.stages import scored_split

    check_launch(cfg)  # trainer=ddp: launched by torchrun/SLURM, never re-executed by Lightning
    if cfg.eval.get("teacher") is None:
        raise UserError("task=train_teacher needs eval=soft_label (the teacher is eval.teacher)")
    if cfg.eval.teacher.get("pretrained_dir"):
        raise UserError("eval.teacher.pretrained_dir is set: that teacher is loaded, not trained")
    data = scored_split(cfg, build(cfg.dataset))  # the teacher never sees a validation split
    teacher = build(cfg.eval.teacher)
    trainer_factory = build(cfg.trainer)
    path = teacher.cache_path(data)
    if retrain or not path.is_file():
        _, meta = teacher.train(data, trainer_factory)
    else:
        _, meta = teacher.load(path, data)
    copy = Path(output_dir(cfg)) / "checkpoints" / "teacher.pt"
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, copy)
    metrics = {"dataset": data.name, "teacher/arch": teacher.arch, **meta, "teacher/checkpoint": str(copy)}
    return finish(cfg, metrics, make_logger(cfg))

"""Device and launch policy: which device a job samples on, how many processes train one
student, and the checks that a GPU or DDP trainer was started the way it needs."""

from __future__ import annotations

import functools

import torch
from omegaconf import DictConfig, OmegaConf

from ddcore.distributed import launcher_shard
from ddcore.errors import UserError


def resolve_device(accelerator: str) -> torch.device:
    """The torch device for non-Lightning work (sampling), from ``trainer.accelerator``."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("trainer=gpu but no CUDA device is visible (use trainer=cpu)")
        return torch.device("cuda")
    return torch.device("cpu")


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


def rank_trainer(trainer_factory, shard):
    """Students of this rank on its own GPU (``cuda:<local rank>``) when the ranks of a job train
    students of their own; DDP (one student over all ranks) and CPUs are left as configured."""
    keywords = getattr(trainer_factory, "keywords", {})
    if shard.world_size == 1 or is_ddp(keywords) or keywords.get("accelerator") not in ("gpu", "cuda"):
        return trainer_factory
    return functools.partial(trainer_factory, devices=[shard.local_rank % max(1, torch.cuda.device_count())])

"""What every task runs on: building config nodes, the job context (launch checked, TF32, the
allocator, the ranks), the logger run, and the end of a job (metrics.json and the logger)."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from ddapp.devices import check_launch
from ddapp.manifest import resolved_config
from ddapp.result_logging import Report, log_results, offline_unless_reachable
from ddcore.distributed import init_process_group, team
from ddcore.errors import UserError
from ddcore.files import write_json
from ddcore.sharding import current_shard

log = logging.getLogger(__name__)


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


def output_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


def make_logger(cfg: DictConfig):
    """The logger run of the job (rank 0's: one run however many processes)."""
    return build(cfg.logger) if cfg.get("logger") and current_shard().is_main else None


# -- the job context ----------------------------------------------------------------------------
def set_tf32(enabled: bool) -> None:
    """TF32 for fp32 matmuls and convolutions on a GPU (``tf32``); nothing on a CPU."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
        torch.backends.cudnn.allow_tf32 = bool(enabled)


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


# -- the end of a job -------------------------------------------------------------------------
def numeric(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


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


# -- the process around the jobs (run.py) -------------------------------------------------------
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

"""What a run reports after distillation and evaluation, and where it goes.

``report_run`` computes the set metrics (``eval/set_metrics.py``) and draws the figures under
``figures/``; ``log_results`` sends numbers, figures and tables to the run's logger:

- WandbLogger: numbers as metrics, figures as images, per-class metrics and the one-row result
  as wandb Tables (offline runs keep them under ``wandb/offline-run-*/files/media``);
- CSVLogger: the numbers (figures and tables stay in the run dir);
- no logger: nothing (metrics.json and figures/ hold everything).

It also registers the ``dd.wandb_group`` resolver that ``conf/logger/wandb.yaml`` uses to put the
jobs of one multirun in one wandb group.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

log = logging.getLogger(__name__)


# -- wandb group -------------------------------------------------------------------------------
def wandb_group(mode, sweep_dir: str, run_name: str) -> str:
    """The sweep folder's name for every job of a multirun; the run name for a single run
    (so single runs of one config, e.g. several seeds, share a group)."""
    if str(mode).endswith("MULTIRUN"):
        return Path(str(sweep_dir)).name
    return str(run_name)


def folder_name(text: str) -> str:
    """A sweep job's folder name: '/' of group overrides (eval/student=convnet) becomes '.', so
    that every job is one folder below the sweep directory."""
    return str(text).replace("/", ".")


def register_resolvers() -> None:
    from ddcore.distributed import run_stamp

    OmegaConf.register_new_resolver("dd.wandb_group", wandb_group, replace=True)
    OmegaConf.register_new_resolver("dd.run_stamp", run_stamp, replace=True, use_cache=True)
    OmegaConf.register_new_resolver("dd.folder_name", folder_name, replace=True)


register_resolvers()


# -- wandb without a network ------------------------------------------------------------------
WANDB_URL = "https://api.wandb.ai"
REACH_TIMEOUT_S = 3.0  # a wandb run online without a network hangs ~95 s, then raises
INIT_TIMEOUT_S = 10.0  # wandb's own wait for an online run to start (its default is 90 s)
FINISH_TIMEOUT_S = 10.0  # and for uploads at the end (its default: no limit)


def reachable(url: str, timeout_s: float = REACH_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout_s``."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname or "", port), timeout=timeout_s).close()
        return True
    except (OSError, ValueError):
        return False


def offline_line(why: str, save_dir) -> str:
    """The one line an online wandb run that falls back to offline prints."""
    return f"wandb: {why}, logging offline instead (upload later with wandb sync {save_dir}/wandb)"


def offline_unless_reachable(cfg) -> None:
    """``logger=wandb`` online with wandb's server out of reach: logged offline instead (one
    warning; ``wandb sync`` uploads it later), decided before any work rather than after it."""
    import os

    logger = cfg.get("logger")
    if not logger or "WandbLogger" not in str(logger.get("_target_", "")):
        return
    if str(logger.get("mode") or os.environ.get("WANDB_MODE", "online")) != "online":
        return
    url = os.environ.get("WANDB_BASE_URL", WANDB_URL)
    if reachable(url):
        return
    log.warning(offline_line(f"{url} is not reachable", logger.get("save_dir", "<run dir>")))
    OmegaConf.update(cfg, "logger.mode", "offline")
    os.environ["WANDB_MODE"] = "offline"


# -- logging -----------------------------------------------------------------------------------
def scalars(metrics: dict) -> dict:
    """Values a table cell can hold (lists such as per-repeat accuracies left out)."""
    return {k: v for k, v in metrics.items() if v is None or isinstance(v, (bool, int, float, str))}


def numbers(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def log_results(
    logger,
    metrics: dict,
    per_class: list[dict] | None = None,
    figures: dict[str, Path] | None = None,
    config: dict | None = None,
) -> None:
    """Numbers, figures and tables of a finished run to ``logger`` (wandb, CSV or None).

    ``config`` (the resolved job config) becomes the run's hyperparameters, so a wandb
    dashboard can plot accuracy against method.t_sg or method.lam.
    """
    if logger is None:
        return
    if config:
        logger.log_hyperparams(config)
    if numbers(metrics):
        logger.log_metrics(numbers(metrics))
    for name, path in (figures or {}).items():
        if hasattr(logger, "log_image") and Path(path).is_file():
            logger.log_image(key=f"figures/{name}", images=[str(path)])
    if hasattr(logger, "log_table"):
        if per_class:
            columns = list(per_class[0])
            logger.log_table(
                key="set/per_class",
                columns=columns,
                data=[[row.get(c) for c in columns] for row in per_class],
            )
        row = scalars(metrics)
        if row:
            logger.log_table(key="result", columns=list(row), data=[list(row.values())])
    if hasattr(logger, "save"):
        logger.save()  # CSVLogger writes its file here; metrics logged after a fit need it


# -- the report of a run -----------------------------------------------------------------------
@dataclass
class Report:
    metrics: dict  # set/* entries for metrics.json
    per_class: list[dict]  # one row per class (a wandb Table)
    figures: dict[str, Path] = field(default_factory=dict)


def report_run(
    out_dir: Path,
    data,
    distilled,
    generator=None,
    histories=None,
    seed: int = 0,
    space: str = "pixels",
    tsne_input: str = "pixels",
    tsne_classes: int = 4,
    k: int = 50,
    max_real: int | None = 1000,
    workers: int = 0,
) -> Report:
    """Set metrics and figures of a run; the caller logs them (``log_results``).

    Args:
        space: feature space of the set metrics: pixels | latents (the generator's encoder) |
            tsne (per-class t-SNE of ``tsne_input`` features, as the paper).
        tsne_input: pixels | latents, the features t-SNE embeds (metrics and figure).
        tsne_classes: classes shown in figures/tsne.png (the first ones; 0 = no figure).
        histories: per student repeat, its (epoch, test accuracy) pairs.
        max_real: real images per class compared against (a seeded subset; None = all),
            decoded by ``workers`` DataLoader processes; recorded as ``set/max_real``.
    """
    from eval.set_metrics import set_metrics

    base = "latents" if space == "latents" else (tsne_input if space == "tsne" else "pixels")
    encoder = generator.encode if (base == "latents" and generator is not None) else None
    if base == "latents" and encoder is None:
        log.warning("set metrics: no generator to encode latents with; using pixels instead")
        space, base = ("pixels" if space == "latents" else space), "pixels"
    result = set_metrics(
        distilled, data, space=space, encoder=encoder, k=k, seed=seed, max_real=max_real, workers=workers
    )
    if result.degenerate:  # reported once, in one line; the figures still get drawn
        ids = [data.class_ids[label] for label in result.degenerate]
        log.warning(
            f"degenerate data: {len(ids)} of {data.num_classes} classes (e.g. {ids[:3]}) "
            "have one real image or constant images; their t-SNE is flat and their "
            "diversity undefined"
        )
    metrics = {
        **result.summary(),
        "set/features": base,
        "set/max_real": max_real,
        "set/per_class": result.per_class,
        "set/degenerate_classes": len(result.degenerate),
    }
    figures = draw_figures(
        Path(out_dir) / "figures",
        data,
        distilled,
        result,
        encoder,
        base,
        histories,
        tsne_classes,
        seed,
        max_real,
        workers,
    )
    return Report(metrics, result.per_class, figures)


def draw_figures(
    folder: Path,
    data,
    distilled,
    result,
    encoder,
    base: str,
    histories,
    tsne_classes: int,
    seed: int,
    max_real: int | None,
    workers: int = 0,
) -> dict[str, Path]:
    """grid (kept when distillation already drew it), scatter, tsne, training curves."""
    from ddapp.figures import save_grid, save_scatter, save_training_curves, save_tsne
    from eval.set_metrics import tsne_panels

    figures = {"grid": folder / "grid.png"}
    if not figures["grid"].is_file():
        save_grid(distilled, data, figures["grid"])
    figures["scatter"] = save_scatter(
        result.diversity,
        result.representativeness,
        result.labels,
        data.class_names,
        folder / "scatter.png",
        title=f"representativeness vs diversity: {data.name}",
        space=base if result.space != "tsne" else f"t-SNE of {base}",
    )
    shown = list(range(min(tsne_classes, data.num_classes)))
    if shown:
        panels = {label: result.embeddings[label] for label in shown if label in result.embeddings}
        if len(panels) < len(shown):  # t-SNE not already computed for the metrics
            panels = tsne_panels(
                distilled, data, shown, encoder, seed=seed, max_real=max_real, workers=workers
            )
        figures["tsne"] = save_tsne(
            {data.class_names[label]: xy for label, xy in panels.items()},
            folder / "tsne.png",
            title=f"t-SNE of real vs distilled ({base}): {data.name}",
        )
    if histories:
        figures["training_curves"] = save_training_curves(histories, folder / "training_curves.png")
    return figures

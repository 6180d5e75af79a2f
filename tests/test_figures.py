"""Figures are valid PNGs of sensible size; results reach wandb (offline) and CSV loggers."""

import json
import math
from pathlib import Path

import torch
from PIL import Image

from ddapp.figures import save_grid, save_scatter, save_training_curves, save_tsne
from ddapp.result_logging import log_results, report_run, wandb_group
from ddcore.data.base import ImageClassificationData, TensorSource
from ddcore.distilled import DistilledSet

NAMES = ["tench", "English springer", "a rather long class name that gets cut", "golf ball"]


def rgb_data(real=12, resolution=8) -> ImageClassificationData:
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(real * len(NAMES), 3, resolution, resolution, generator=g) * 255).byte()
    y = torch.arange(len(NAMES)).repeat_interleave(real)
    source = TensorSource(x, y)
    return ImageClassificationData(
        name="rgb",
        class_ids=[f"n{i:08d}" for i in range(len(NAMES))],
        class_names=NAMES,
        resolution=resolution,
        channels=3,
        train=source,
        test=source,
    )


def distilled_set(ipc=3, resolution=8, channels=3) -> DistilledSet:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(ipc * len(NAMES), channels, resolution, resolution, generator=g)
    return DistilledSet(x, torch.arange(len(NAMES)).repeat_interleave(ipc))


def check_png(path: Path, min_size=(200, 150), max_size=(4000, 4000)) -> tuple[int, int]:
    """A readable PNG, neither tiny nor huge, and not blank."""
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
        assert min_size[0] <= w <= max_size[0] and min_size[1] <= h <= max_size[1], im.size
        lo, hi = im.convert("L").getextrema()
        assert hi - lo > 50
    return w, h


def test_grid_has_a_labelled_row_per_class(tmp_path):
    path = save_grid(distilled_set(ipc=3), rgb_data(), tmp_path / "figures" / "grid.png")
    w, h = check_png(path, min_size=(3 * 50 + 100, 4 * 50))  # 3 cells of 48+2 px + the names
    assert h < 4 * 50 + 60  # one row per class plus the title
    # a grayscale set at the digits' 16 px keeps working and grows with the classes
    gray = distilled_set(ipc=2, resolution=16, channels=1)
    check_png(save_grid(gray, rgb_data(resolution=16), tmp_path / "gray.png"))


def test_tsne_scatter_and_curves_are_pngs(tmp_path):
    g = torch.Generator().manual_seed(0)
    panels = {name: (torch.randn(30, 2, generator=g), torch.randn(3, 2, generator=g)) for name in NAMES[:3]}
    check_png(save_tsne(panels, tmp_path / "tsne.png"))
    div = [1.0, 2.0, 1.5, math.nan, 0.5, 0.7]
    rep = [2.0, 1.0, 1.2, 3.0, 2.5, 2.2]
    check_png(save_scatter(div, rep, [0, 0, 0, 1, 2, 2], NAMES, tmp_path / "scatter.png"))
    histories = [[(e, 0.1 * e) for e in (2, 4, 6, 8)], [(e, 0.1 * e + 0.05) for e in (2, 4, 6, 8)]]
    check_png(save_training_curves(histories, tmp_path / "curves.png"))


def test_report_run_writes_every_figure_and_the_set_metrics(tmp_path):
    histories = [[(1, 0.3), (2, 0.5)], [(1, 0.35), (2, 0.45)]]
    report = report_run(
        tmp_path, rgb_data(), distilled_set(), histories=histories, tsne_classes=2, space="pixels"
    )
    assert set(report.figures) == {"grid", "scatter", "tsne", "training_curves"}
    for name, path in report.figures.items():
        assert path == tmp_path / "figures" / f"{name}.png"
        check_png(path)
    assert report.metrics["set/space"] == "pixels" and report.metrics["set/k"] == 50
    assert report.metrics["set/diversity_mean"] > 0
    assert [row["class_id"] for row in report.per_class] == rgb_data().class_ids
    json.dumps(report.metrics)  # metrics.json can hold it
    # no generator to encode with: falls back to pixels rather than failing the run
    assert (
        report_run(tmp_path / "b", rgb_data(), distilled_set(), space="latents", tsne_classes=0).metrics[
            "set/space"
        ]
        == "pixels"
    )


def test_results_reach_an_offline_wandb_run(tmp_path):
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    figures = report_run(tmp_path, rgb_data(), distilled_set(), tsne_classes=1).figures
    per_class = [
        {"label": 0, "class_name": "tench", "diversity_mean": 1.5},
        {"label": 1, "class_name": "English springer", "diversity_mean": None},
    ]
    metrics = {"method": "mgd3", "student/final_acc_mean": 0.5, "student/final_acc_runs": [0.5]}
    logger = WandbLogger(save_dir=str(tmp_path), mode="offline", project="t")
    try:
        log_results(logger, metrics, per_class, figures, config={"method": {"lam": 0.1}})
    finally:
        wandb.finish()
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    media = run / "files" / "media"
    logged = {p.name.rsplit("_", 2)[0] for p in (media / "images" / "figures").glob("*.png")}
    assert logged == set(figures)  # grid, scatter, tsne
    (table,) = (media / "table" / "set").glob("per_class_*.table.json")
    content = json.loads(table.read_text())
    assert content["columns"] == ["label", "class_name", "diversity_mean"]
    assert content["data"][0] == [0, "tench", 1.5]
    (result,) = media.joinpath("table").glob("result_*.table.json")
    assert json.loads(result.read_text())["columns"] == ["method", "student/final_acc_mean"]


def test_csv_logger_and_no_logger_are_handled(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    log_results(None, {"set/diversity_mean": 1.0}, [{"a": 1}], {"grid": tmp_path / "x.png"})
    logger = CSVLogger(save_dir=str(tmp_path), name="csv")
    log_results(
        logger, {"set/diversity_mean": 1.25, "method": "mgd3"}, [{"a": 1}], {"grid": tmp_path / "missing.png"}
    )
    (metrics_csv,) = (tmp_path / "csv").glob("version_*/metrics.csv")
    assert "set/diversity_mean" in metrics_csv.read_text() and "1.25" in metrics_csv.read_text()


def test_wandb_group_is_the_sweep_folder_in_a_multirun(make_cfg):
    from hydra.types import RunMode

    assert (
        wandb_group(RunMode.MULTIRUN, "/logs/multiruns/2026-01-01_10-00-00", "mgd3-x")
        == "2026-01-01_10-00-00"
    )
    assert wandb_group(RunMode.RUN, "/logs/multiruns/2026", "mgd3-digits-ipc10") == "mgd3-digits-ipc10"
    cfg = make_cfg("logger=wandb")
    assert cfg.logger.group == cfg.logger.name == "mgd3-digits-ipc2"

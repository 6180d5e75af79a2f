"""Figures written under ``figures/`` of a run (PNG, drawn with matplotlib's Agg canvas).

- ``grid.png``: the distilled set, one labelled row per class;
- ``tsne.png``: t-SNE of real vs distilled samples for a few classes;
- ``scatter.png``: representativeness vs diversity of every distilled image, one colour per class
  (MGD^3 paper, Fig. 3/6);
- ``training_curves.png``: test accuracy of each student over its training.

Plotting only: the numbers come in as arrays (``eval/set_metrics.py`` computes them). Figures are
built as ``matplotlib.figure.Figure`` objects, not through pyplot, so no global state or GUI
backend is involved and nothing leaks across the jobs of a multirun.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from ddcore.data.base import ImageClassificationData, as_float, resize_images
from ddcore.distilled import DistilledSet, as_numpy_grid

DPI = 100


def save_figure(fig: Figure, path: Path, dpi: int = DPI) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white")
    return path


def fit_cells(images: torch.Tensor, min_cell: int, max_cell: int) -> torch.Tensor:
    """Images upscaled (nearest, integer factor) to >= ``min_cell`` or downscaled to <= ``max_cell``."""
    size = images.shape[-1]
    if size < min_cell:
        return F.interpolate(images, scale_factor=-(-min_cell // size), mode="nearest")
    return resize_images(images, max_cell) if size > max_cell else images


def _short(name: str, limit: int = 24) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def class_colors(n: int) -> list:
    """Distinct colours for n classes: tab10 / tab20, then evenly spaced hues."""
    import matplotlib

    if n <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [matplotlib.colormaps["tab20"](i) for i in range(n)]
    return [matplotlib.colormaps["hsv"](i / n) for i in range(n)]


# -- the distilled set -------------------------------------------------------------------------
def save_grid(
    distilled: DistilledSet,
    data: ImageClassificationData,
    path: Path,
    max_per_class: int = 10,
    min_cell: int = 48,
    max_cell: int = 96,
    max_classes: int = 100,
    title: str | None = None,
) -> Path:
    """One row per class (up to ``max_per_class`` images) with the class name on the left.

    Cells are upscaled (nearest) to >= ``min_cell`` px and downscaled to <= ``max_cell`` px, and
    drawn at one screen pixel per image pixel; at most ``max_classes`` rows.
    """
    shown = list(range(min(data.num_classes, max_classes)))
    cols = max(1, min(max_per_class, max(distilled.per_class_counts(data.num_classes))))
    rows = []
    for label in shown:  # each row brought to its cell size at once: 100 rows of 224 px in float are 600 MB
        images = as_float(distilled.images[distilled.labels == label][:cols].cpu())
        pad = torch.ones(cols - len(images), *distilled.images.shape[1:])
        rows.append(fit_cells(torch.cat([images, pad]), min_cell, max_cell))
    grid = torch.cat(rows)
    cell = grid.shape[-1] + 2
    grid = F.pad(grid, (1, 1, 1, 1), value=1.0)  # white separators
    array = as_numpy_grid(grid, rows=len(shown))
    names = [_short(data.class_names[label]) for label in shown]
    if title is None:
        title = f"distilled set: {data.name}, {len(distilled)} images"
    if len(shown) < data.num_classes:
        title += f" (first {len(shown)} of {data.num_classes} classes)"
    _draw_image_with_row_labels(array, names, cell, title, path)
    return Path(path)


def _draw_image_with_row_labels(
    array: np.ndarray, names: list[str], cell: int, title: str, path: Path
) -> None:
    height, width = array.shape[:2]
    left = 16 + 7 * max(len(n) for n in names)  # ~7 px per character at 9 pt
    top, bottom, right = 28, 6, 6
    fig_w, fig_h = max(left + width + right, 20 + 7 * len(title)), top + height + bottom
    fig = Figure(figsize=(fig_w / DPI, fig_h / DPI), dpi=DPI)
    ax = fig.add_axes((left / fig_w, bottom / fig_h, width / fig_w, height / fig_h))
    gray = array.shape[2] == 1
    ax.imshow(
        array[:, :, 0] if gray else array,
        cmap="gray" if gray else None,
        vmin=0,
        vmax=255,
        interpolation="nearest",
        aspect="equal",
    )
    ax.set_yticks([(i + 0.5) * cell for i in range(len(names))], names, fontsize=9)
    ax.set_xticks([])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.text(0.5, 1 - 4 / fig_h, title, ha="center", va="top", fontsize=10)
    save_figure(fig, path)


# -- set metrics -------------------------------------------------------------------------------
def save_tsne(
    panels: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: Path,
    title: str = "t-SNE of real vs distilled samples",
) -> Path:
    """One panel per class: real samples as grey dots, distilled ones as red stars.

    ``panels``: class name -> (real_xy (m, 2), distilled_xy (n, 2)).
    """
    names = list(panels)
    cols = min(4, max(1, len(names)))
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(3.2 * cols, 3.2 * rows + 0.6), dpi=DPI)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, name in zip(axes, names):
        real, fake = (np.asarray(a, dtype=float) for a in panels[name])
        ax.scatter(real[:, 0], real[:, 1], s=8, c="0.6", alpha=0.6, linewidths=0, label=f"real ({len(real)})")
        ax.scatter(
            fake[:, 0],
            fake[:, 1],
            s=110,
            c="tab:red",
            marker="*",
            edgecolors="black",
            linewidths=0.6,
            label=f"distilled ({len(fake)})",
        )
        ax.set_title(f"class {_short(name)}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(loc="best", fontsize=7, framealpha=0.8)
    for ax in axes[len(names) :]:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def save_scatter(
    diversity: Sequence[float],
    representativeness: Sequence[float],
    labels: Sequence[int],
    class_names: Sequence[str],
    path: Path,
    title: str = "representativeness vs diversity",
    space: str = "pixels",
) -> Path:
    """Every distilled image as a dot (x = diversity, y = representativeness), one colour per
    class; each class's mean as a larger outlined marker. NaN values (one-image classes) skip."""
    div = np.asarray(diversity, dtype=float)
    rep = np.asarray(representativeness, dtype=float)
    labels = np.asarray(labels)
    present = [int(label) for label in np.unique(labels)]
    colors = class_colors(len(present))
    fig = Figure(figsize=(7.5 if len(present) <= 20 else 6, 5.2), dpi=DPI)
    ax = fig.subplots()
    for color, label in zip(colors, present):
        mask = (labels == label) & np.isfinite(div) & np.isfinite(rep)
        if not mask.any():
            continue
        name = _short(str(class_names[label]), 18)
        ax.scatter(div[mask], rep[mask], s=18, color=color, alpha=0.55, linewidths=0)
        ax.scatter(
            div[mask].mean(),
            rep[mask].mean(),
            s=90,
            color=color,
            edgecolors="black",
            linewidths=0.8,
            label=name,
        )
    ax.set_xlabel(f"diversity: distance to the nearest other distilled image ({space}) →")
    ax.set_ylabel(f"representativeness: mean distance to nearest real ({space})\nlower = more representative")
    ax.set_title(f"{title}\n(dots: images, outlined: class means)", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0] and len(present) <= 20:  # none: no finite point
        ax.legend(title="class", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    elif not ax.get_legend_handles_labels()[0]:
        ax.text(0.5, 0.5, "no finite values (one image per class?)", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    return save_figure(fig, path)


# -- students ----------------------------------------------------------------------------------
def save_training_curves(
    history_per_repeat: Sequence[Sequence[tuple[int, float]]],
    path: Path,
    title: str = "student test accuracy during training",
) -> Path:
    """Test accuracy (%) vs epoch, one line per student repeat, plus their mean when the
    repeats share their evaluation epochs."""
    fig = Figure(figsize=(6.4, 4.2), dpi=DPI)
    ax = fig.subplots()
    curves = [np.asarray(h, dtype=float).reshape(-1, 2) for h in history_per_repeat]
    for i, curve in enumerate(curves):
        ax.plot(
            curve[:, 0],
            100 * curve[:, 1],
            marker="." if len(curve) < 30 else None,
            alpha=0.6 if len(curves) > 1 else 1.0,
            label=f"repeat {i}",
        )
    same_epochs = len(curves) > 1 and all(
        len(c) == len(curves[0]) and np.array_equal(c[:, 0], curves[0][:, 0]) for c in curves
    )
    if same_epochs:
        mean = np.mean([c[:, 1] for c in curves], axis=0)
        ax.plot(curves[0][:, 0], 100 * mean, color="black", linewidth=2, label="mean")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)

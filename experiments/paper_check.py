"""Ours vs the paper: a run of a paper preset (conf/experiment/*_table*.yaml) against the number
the paper reports at the run's ipc.

    python experiments/paper_check.py <run folder>

Reads ``<run>/.hydra/config.yaml`` (its ``paper:`` block) and ``<run>/metrics.json``, prints our
top-1 next to the paper's, with the difference in units of the paper's std and of ours. The
paper's metric (``paper.metric``, best top-1 for both seed papers) is the one compared; the other
(final top-1) is shown beside it. Then whether the run is at the paper's scale: the preset named
in ``<run>/.hydra/hydra.yaml`` is composed again (``experiment=<name> ipc=<run's ipc>``) and every
setting of dataset, generator, method and eval that differs is listed, with the student epochs
and repeats that actually ran. Exit 0; 2 with one line when the run has no paper block, no
metrics or no paper number at its ipc.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # ddapp (the config schemas) and eval (the epochs rule)
SECTIONS = ("dataset", "generator", "method", "eval")  # what decides the number
# bookkeeping that does not change the result: where files go, how work is spread
IGNORED = {"root", "distilled_dir", "num_workers", "parallel", "max_bank_gb", "test_batch_size",
           "checkpoint_every", "latent_workers", "latent_batch_size", "cache_dir", "latent_cache_dir",
           "score_cache_dir", "latent_cache", "score_cache", "trainer_kwargs", "model_dir"}  # fmt: skip


class NoComparison(Exception):
    """The run cannot be compared (one line for the user)."""


# -- reading the run ------------------------------------------------------------------------------
def read_run(run: Path) -> tuple[DictConfig, dict]:
    config, metrics = run / ".hydra" / "config.yaml", run / "metrics.json"
    if not config.is_file():
        raise NoComparison(f"{run}: no .hydra/config.yaml (not a run folder of run.py)")
    cfg = OmegaConf.load(config)
    if not cfg.get("paper"):
        raise NoComparison(
            f"{run}: the run has no paper block (run a paper preset, e.g. experiment=mgd3_imagenette_table1)"
        )
    if not metrics.is_file():
        raise NoComparison(f"{run}: no metrics.json (the run has not finished)")
    found = json.loads(metrics.read_text())
    if "student/best_acc_mean" not in found:
        raise NoComparison(f"{run}: metrics.json has no student accuracies (task=distill runs no students)")
    return cfg, found


def paper_entry(paper: DictConfig, ipc: int) -> dict:
    """The paper's {mean, std} at ``ipc`` (keys may be read back as ints or strings)."""
    table = OmegaConf.to_container(paper.acc)
    entry = table.get(ipc, table.get(str(ipc)))
    if entry is None:
        reported = ", ".join(str(k) for k in table)
        raise NoComparison(f"the paper reports no number at ipc {ipc} (it reports ipc {reported})")
    return entry


def hydra_choices(run: Path) -> dict:
    path = run / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return {}
    return OmegaConf.to_container(OmegaConf.load(path).hydra.runtime.choices)


def run_overrides(run: Path) -> list[str]:
    path = run / ".hydra" / "overrides.yaml"
    return list(OmegaConf.load(path)) if path.is_file() else []


# -- ours vs the paper ----------------------------------------------------------------------------
def in_units(diff: float, std: float | None, missing: str) -> str:
    return f"{diff / std:+.2f}" if std else missing


def comparison(paper: DictConfig, entry: dict, metrics: dict) -> list[str]:
    """The table: the paper's number, ours for the compared metric, the other metric beside it."""
    metric = paper.get("metric", "best")
    mean, std = float(entry["mean"]), entry.get("std")
    repeats = metrics.get("student/repeats", len(metrics.get("student/best_acc_runs", [])))
    our_missing = "n/a (one student)" if repeats == 1 else "n/a (our std is 0)"
    paper_missing = "n/a (no paper std)"
    rows = [f"{'':24}{'top-1 %':>16}{'ours - paper':>14}{'/ paper std':>20}{'/ our std':>20}"]
    paper_cell = f"{mean:.2f}" + (f" ± {float(std):.2f}" if std is not None else "")
    rows.append(f"{'paper (' + metric + ')':24}{paper_cell:>16}")
    for name in (metric, "final" if metric == "best" else "best"):
        ours = 100 * metrics[f"student/{name}_acc_mean"]
        ours_std = 100 * metrics.get(f"student/{name}_acc_std", 0.0)
        diff = ours - mean
        row_name = f"ours ({name}{', compared' if name == metric else ''})"
        cells = f"{ours:.2f} ± {ours_std:.2f}"
        by_paper = in_units(diff, std and float(std), paper_missing)
        by_ours = in_units(diff, ours_std, our_missing)
        rows.append(f"{row_name:24}{cells:>16}{diff:>+14.2f}{by_paper:>20}{by_ours:>20}")
    return rows


# -- at the paper's scale? ------------------------------------------------------------------------
def compose_preset(name: str, ipc: int) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ddapp.schemas import register

    register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            return compose("config", overrides=[f"experiment={name}", f"ipc={ipc}"])
    finally:
        GlobalHydra.instance().clear()


def label(node) -> str:
    """A short name for a config node that has a _target_ (its name/subset, else the class)."""
    if not isinstance(node, dict):
        return repr(node)
    for key in ("name", "subset"):
        if isinstance(node.get(key), str) and "${" not in node[key]:
            return node[key]
    return str(node.get("_target_", "?")).rsplit(".", 1)[-1]


def differences(ours, preset, path: str) -> list[str]:
    """Settings of ``ours`` that differ from ``preset``; a node built from
    another class is one line, not one line per key."""
    if isinstance(ours, dict) and isinstance(preset, dict):
        if ours.get("_target_") != preset.get("_target_"):
            return [f"{path}: {label(ours)} (preset: {label(preset)})"]
        lines = []
        for key in sorted(set(ours) | set(preset), key=str):
            if key in IGNORED:
                continue
            if key not in ours or key not in preset:
                where = "only in the run" if key in ours else "only in the preset"
                lines.append(f"{path}.{key}: {where}")
                continue
            lines += differences(ours[key], preset[key], f"{path}.{key}")
        return lines
    return [] if ours == preset else [f"{path}: {shown(ours)} (preset: {shown(preset)})"]


def shown(value) -> str:
    return json.dumps(value, default=str)  # null, numbers, "strings", [lists] as in the yaml


def preset_epochs(preset: DictConfig, ipc: int) -> int:
    epochs = preset.eval.get("epochs")
    if epochs is None:
        from eval.hard_label import epochs_for_ipc

        return epochs_for_ipc(ipc)
    return int(epochs)


def scale_check(run: Path, cfg: DictConfig, metrics: dict, ipc: int) -> list[str]:
    """What makes the run differ from the paper preset's run: empty when at the paper's scale."""
    choices = hydra_choices(run)
    name = choices.get("experiment")
    if not name:
        return ["cannot tell: the run's .hydra/hydra.yaml does not name its experiment preset"]
    try:
        preset = compose_preset(name, ipc)
    except Exception as exc:  # noqa: BLE001  (a renamed or broken preset: say so, keep the table)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return [f"cannot tell: experiment={name} does not compose any more ({first})"]
    lines = []
    if choices.get("debug"):
        lines.append(f"debug={choices['debug']} (shrinks every stage)")
    epochs, want = metrics.get("student/epochs"), preset_epochs(preset, ipc)
    if epochs is not None and epochs != want:
        lines.append(f"student epochs: {epochs} (paper scale: {want})")
    repeats, want = metrics.get("student/repeats"), preset.eval.get("repeats")
    if repeats is not None and repeats != want:
        lines.append(f"student repeats: {repeats} (paper scale: {want})")
    for section in SECTIONS:
        lines += differences(values(cfg, section), values(preset, section), section)
    return lines


def values(cfg: DictConfig, section: str):
    """A section as plain data, resolved (a default written as ``${oc.select:...}`` compares by
    its value); unresolved where it cannot be outside the job (``${hydra:...}``)."""
    if cfg.get(section) is None:
        return None
    try:
        return OmegaConf.to_container(cfg[section], resolve=True)
    except Exception:  # noqa: BLE001  (a resolver only Hydra's runtime has)
        return OmegaConf.to_container(cfg[section], resolve=False)


# -- the report -----------------------------------------------------------------------------------
def report(run: Path) -> list[str]:
    cfg, metrics = read_run(run)
    ipc = int(metrics.get("ipc", cfg.get("ipc")))
    paper = cfg.paper
    entry = paper_entry(paper, ipc)
    lines = [
        f"{paper.get('name', 'paper')}",
        f"{paper.get('table', '')} at ipc {ipc} (source: {paper.get('source', 'n/a')})",
        f"compares {paper.get('metric', 'best')} top-1 (what the paper reports; the best-of-run "
        "number peeks at the test set, so final is shown too)",
        "",
        *comparison(paper, entry, metrics),
        "",
    ]
    problems = scale_check(run, cfg, metrics, ipc)
    if not problems:
        lines.append(
            f"at the paper's scale: settings match experiment={hydra_choices(run).get('experiment')}"
        )
        return lines
    overrides = " ".join(run_overrides(run))
    lines.append("NOT at the paper's scale" + (f" (overrides: {overrides})" if overrides else "") + ":")
    lines += [f"  - {line}" for line in problems]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "run", type=Path, help="a run folder of a paper preset (has .hydra/ and metrics.json)"
    )
    args = parser.parse_args(argv)
    try:
        lines = report(args.run)
    except NoComparison as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

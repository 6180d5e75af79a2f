"""Table of a sweep: one row per job of a Hydra multirun folder, from each job's metrics.json.

    python experiments/summarize.py logs/multiruns/<time>            # Markdown to stdout
    python experiments/summarize.py <dir> --csv table.csv             # also write CSV
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

COLUMNS = [("method", "method"), ("ipc", "ipc"),
           ("student/final_acc_mean", "final top-1"), ("student/final_acc_std", "±"),
           ("student/best_acc_mean", "best top-1"), ("student/best_acc_std", "±"),
           ("distill/seconds", "distill s"), ("student/seconds", "eval s")]


def collect(sweep_dir: Path) -> list[dict]:
    rows = []
    for metrics_file in sorted(sweep_dir.glob("*/metrics.json")):
        row = json.loads(metrics_file.read_text())
        row["job"] = metrics_file.parent.name
        rows.append(row)
    return rows


def cell(value) -> str:
    if isinstance(value, float):
        return f"{100 * value:.1f}" if value <= 1.0 else f"{value:.1f}"
    return "" if value is None else str(value)


def markdown(rows: list[dict]) -> str:
    header = ["job"] + [title for _, title in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["job"]] + [cell(row.get(key)) for key, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = collect(args.sweep_dir)
    if not rows:
        print(f"error: no */metrics.json under {args.sweep_dir} (is it a multirun folder whose "
              "jobs finished?)", file=sys.stderr)
        return 2
    print(markdown(rows))
    if args.csv:
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["job"] + [k for k, _ in COLUMNS],
                                    extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

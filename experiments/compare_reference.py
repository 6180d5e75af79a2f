"""Does a rerun of the reference experiment reproduce another run's tables?

    python experiments/compare_reference.py results/reference_runs /path/to/clone/results/reference_runs

Pairs the jobs that both runs finished with the same composed configuration (the ``config``
digest in ``job.json``) and compares their mean final top-1 over the student repeats: identical,
within the spread (the larger of the two stds), or outside it. Prints one line of counts, then
each row outside the spread. Exit 0; 2 when a folder is missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from experiments.reference_report import load, stat  # noqa: E402


def finished(runs: Path) -> dict[str, tuple[str, float, float]]:
    """job name -> (config digest, mean, std of final top-1 in %) for each job with a result."""
    return {
        name: (job["config"], *stat(job))
        for name, job in load(runs).items()
        if job.get("config") and stat(job) is not None
    }


def compare(a: Path, b: Path) -> tuple[dict[str, int], list[str]]:
    """Counts of identical / within-std / outside rows (same config in both runs), and the
    outside rows as text."""
    first, second = finished(a), finished(b)
    counts = {"identical": 0, "within std": 0, "outside std": 0, "other config": 0}
    outside = []
    for name in sorted(set(first) & set(second)):
        (ca, ma, sa), (cb, mb, sb) = first[name], second[name]
        if ca != cb:
            counts["other config"] += 1
        elif abs(ma - mb) < 1e-9:
            counts["identical"] += 1
        elif abs(ma - mb) <= max(sa, sb):
            counts["within std"] += 1
        else:
            counts["outside std"] += 1
            outside.append(f"{name}: {ma:.2f} ± {sa:.2f} vs {mb:.2f} ± {sb:.2f} ({mb - ma:+.2f})")
    return counts, outside


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path, help="a runs folder (results/reference_runs)")
    parser.add_argument("second", type=Path, help="another run's folder")
    args = parser.parse_args(argv)
    for folder in (args.first, args.second):
        if not folder.is_dir():
            print(f"{folder}: no such runs folder; give two results/reference_runs folders", file=sys.stderr)
            return 2
    counts, outside = compare(args.first, args.second)
    pairs = sum(counts.values())
    print(f"{pairs} jobs in both: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    for line in outside:
        print("  outside std: " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

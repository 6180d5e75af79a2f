"""Benchmark of ``eval.students.AvgPool2`` against ``F.avg_pool2d(x, 2)`` (``make bench``): the
2x2 average pool of the ConvNet students at the reference experiment's shapes, one CPU thread,
forward and forward + backward, in one run (ratios; the results are bit-identical, checked here
and in ``tests/test_students.py``).

    python experiments/bench_pool.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from eval.students import AvgPool2

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(64, 32, 28, 28), (64, 32, 14, 14), (64, 32, 7, 7), (500, 32, 28, 28)]


def seconds(fn, x, grad, repeats: int, backward: bool) -> float:
    """Median time of one call (with its backward when asked)."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        if backward:
            torch.autograd.grad(fn(x), x, grad)
        else:
            with torch.no_grad():
                fn(x)
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[repeats // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ours, rows = AvgPool2(), []
    for shape in SHAPES:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).requires_grad_()
        ref = F.avg_pool2d(x, 2)
        grad = torch.randn_like(ref)
        assert torch.equal(ours(x), ref), "AvgPool2 differs from F.avg_pool2d"
        row = {"shape": list(shape)}
        for backward in (False, True):
            lib = seconds(lambda t: F.avg_pool2d(t, 2), x, grad, args.repeats, backward)
            new = seconds(ours, x, grad, args.repeats, backward)
            key = "fwd_bwd" if backward else "fwd"
            row.update(
                {f"{key}_library_ms": lib * 1e3, f"{key}_ours_ms": new * 1e3, f"{key}_speedup": lib / new}
            )
        rows.append(row)
        print(
            f"{'x'.join(map(str, shape)):>14}: forward {row['fwd_library_ms']:.2f} -> "
            f"{row['fwd_ours_ms']:.2f} ms "
            f"({row['fwd_speedup']:.2f}x), forward+backward {row['fwd_bwd_library_ms']:.2f} -> "
            f"{row['fwd_bwd_ours_ms']:.2f} ms ({row['fwd_bwd_speedup']:.2f}x)"
        )
    out = ROOT / "logs" / "bench" / "bench_pool.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

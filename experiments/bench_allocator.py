"""Benchmark of ``ddcore.compat.keep_freed_memory`` (``make bench``): glibc's default vs a heap
that keeps freed blocks, on the reference experiment's student work (one thread, CPU).

Each round runs two child processes, one with ``DD_KEEP_FREED_MEMORY=0`` (glibc's defaults) and
one with it on, alternating which goes first, so drifting load on a shared machine hits both
alike. A child times a ConvNet-32 test pass over 10,000 28 px images (batches of 500, as the
protocols test) and 200 SGD steps on batches of 64, and counts its minor page faults.

    python experiments/bench_allocator.py [--rounds 3] [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys, time
import torch
import ddcore.compat
from eval.students import ConvNet

ddcore.compat.keep_freed_memory(enabled=False)  # DD_KEEP_FREED_MEMORY decides

torch.set_num_threads(1)
gen = torch.Generator().manual_seed(0)
net = ConvNet(1, 10, 28, width=32)
test = torch.rand(10_000, 1, 28, 28, generator=gen)


def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


out = {}
with torch.inference_mode():
    net.eval()
    net(test[:500])  # warm-up
    f, t = faults(), time.perf_counter()
    for i in range(0, len(test), 500):
        net(test[i : i + 500])
    out["test_s"], out["test_faults"] = time.perf_counter() - t, faults() - f
net.train()
opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
x, y = torch.rand(64, 1, 28, 28, generator=gen), torch.randint(0, 10, (64,), generator=gen)
f, t = faults(), time.perf_counter()
for _ in range(int(sys.argv[1])):
    loss = torch.nn.functional.cross_entropy(net(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
out["train_s"], out["train_faults"] = time.perf_counter() - t, faults() - f
print(json.dumps(out))
"""


def child(keep: bool, steps: int) -> dict:
    env = {**os.environ, "DD_KEEP_FREED_MEMORY": "1" if keep else "0", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", CHILD, str(steps)]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200, help="SGD steps timed per child")
    parser.add_argument("--out", default="logs/bench/bench_allocator.json")
    args = parser.parse_args()
    runs = {False: [], True: []}
    for r in range(args.rounds):
        for keep in (r % 2 == 1, r % 2 == 0):
            runs[keep].append(child(keep, args.steps))
    summary = {}
    for keep, name in ((False, "glibc default"), (True, "keep_freed_memory")):
        row = {k: statistics.median(run[k] for run in runs[keep]) for k in runs[keep][0]}
        summary[name] = row
        print(
            f"{name:18s} test pass 10k imgs {row['test_s']:.2f} s ({row['test_faults']:.0f} page faults)"
            f" | {args.steps} train steps {row['train_s']:.2f} s ({row['train_faults']:.0f} page faults)"
        )
    base, kept = summary["glibc default"], summary["keep_freed_memory"]
    summary["speedup"] = {k: base[k] / kept[k] for k in ("test_s", "train_s")}
    print(
        f"speed-up (median of {args.rounds} rounds): test pass {summary['speedup']['test_s']:.2f}x,"
        f" training {summary['speedup']['train_s']:.2f}x"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

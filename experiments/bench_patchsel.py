"""Patch-selection benchmark on this machine with the tiny DiT (one run, ratios measured together).

Prints (1) relevance-scoring throughput (images/s) with the conditional and null terms in one
batched forward vs two separate passes, and (2) the time of a cached re-selection (another IPC,
every class) as a fraction of the first pass that scored the images (target <= 2%), with the
number of model calls the re-selection made (must be 0).

    python experiments/bench_patchsel.py [--draws 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("PROJECT_ROOT", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from bench_sampling import timed_together, tiny_dit  # noqa: E402

import ddcore  # noqa: E402,F401
from ddapp.schemas import PatchSelectionSchema, from_schema  # noqa: E402
from ddcore.data.small import digits  # noqa: E402
from patchsel.distiller import PatchSelection  # noqa: E402
from patchsel.relevance import relevance_maps  # noqa: E402


def count_calls(generator) -> list[int]:
    """Wraps the generator's denoise/encode; the returned one-item list holds the count."""
    calls = [0]
    for name in ("denoise", "encode"):
        original = getattr(generator, name)

        def counted(*args, _original=original, **kwargs):
            calls[0] += 1
            return _original(*args, **kwargs)

        setattr(generator, name, counted)
    return calls


def select_all(method: PatchSelection, data, ipc: int, generator) -> float:
    start = time.perf_counter()
    for label in range(data.num_classes):
        method.distill_class(data, label, ipc, 0, generator)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = digits()
    gen = tiny_dit(data)
    images = data.class_images(3)
    latents = gen.encode(images)
    cond, null = gen.condition(torch.tensor([3])), gen.null_condition(1)
    keys = list(range(len(latents)))

    def score(batched: bool):
        return lambda: relevance_maps(
            gen, latents, cond, null, keys, draws=args.draws, batched=batched, batch_size=64
        )

    t_batched, t_separate = timed_together([score(True), score(False)], args.repeats)
    n = len(latents)
    print(
        f"torch threads: {torch.get_num_threads()}, digits class 3 ({n} images), "
        f"{args.draws} draws, 64 rows per forward"
    )
    print(
        f"relevance scoring: batched cond+null {n / t_batched:.1f} images/s, two passes "
        f"{n / t_separate:.1f} images/s, speed-up {t_separate / t_batched:.2f}x"
    )

    with tempfile.TemporaryDirectory() as cache:
        first = from_schema(PatchSelectionSchema, draws=args.draws, score_cache_dir=cache)
        t_first = select_all(first, data, 10, gen)
        calls = count_calls(gen)
        again = from_schema(PatchSelectionSchema, draws=args.draws, score_cache_dir=cache)
        t_again = select_all(again, data, 20, gen)
    print(
        f"first pass (score + select, ipc 10, {data.num_classes} classes, "
        f"{first.timings['scored_images']} images): {t_first:.2f} s"
    )
    print(
        f"cached re-selection (ipc 20): {t_again:.3f} s = {100 * t_again / t_first:.2f}% of the "
        f"first pass (target <= 2%), model calls: {calls[0]}"
    )


if __name__ == "__main__":
    main()

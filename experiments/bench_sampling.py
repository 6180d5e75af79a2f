"""Sampling benchmark on this machine with the tiny DiT (one run, ratios measured together).

Prints (1) guided / unguided time per class (MGD^3 guidance is a vector operation: target
<= 1.03), (2) batched-per-class / one-sample-at-a-time throughput (target >= 5x; the
official code samples one image at a time), and (3) what the denoiser alone gains from
batching here: a CFG forward of all ipc samples (2 * ipc rows) against one of a single sample
(2 rows). On a compute-bound CPU (3) bounds (2) from above, whatever the sampling loop does.

    python experiments/bench_sampling.py [--ipc 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("PROJECT_ROOT", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import ddcore  # noqa: E402,F401
from ddcore.data.small import digits  # noqa: E402
from ddcore.generators.base import ClassConditionalGenerator, PixelIdentityCodec  # noqa: E402
from ddcore.generators.self_trained.denoiser import build_denoiser, null_label_of  # noqa: E402
from ddcore.sampling import sample_latents  # noqa: E402
from ddcore.seeding import rng_for  # noqa: E402
from mgd3.guidance import ModeGuidance  # noqa: E402

ARCH = dict(num_layers=4, num_attention_heads=4, attention_head_dim=32, patch_size=2)


def tiny_dit(data):
    """The dit_tiny architecture with random weights: speed does not depend on training."""
    torch.manual_seed(0)
    denoiser = build_denoiser("dit", data.channels, 16, data.num_classes, ARCH)
    return ClassConditionalGenerator(
        denoiser,
        PixelIdentityCodec(),
        {"num_train_timesteps": 1000},
        model_classes=data.num_classes,
        null_label=null_label_of(denoiser),
        resolution=16,
        image_channels=1,
        cfg_scale=3.0,
        name="dit_tiny",
    )


def timed(fn, repeats: int) -> float:
    return timed_together([fn], repeats)[0]


def timed_together(fns: list, repeats: int) -> list[float]:
    """Best time of each function over ``repeats`` rounds that run them in turn, so that a slow
    spell of a shared machine falls on every one of them, not on one."""
    for fn in fns:
        fn()  # warm-up
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    data = digits()
    gen = tiny_dit(data)
    labels = torch.full((args.ipc,), 3)
    modes = torch.randn(args.ipc, *gen.latent_shape)

    def unguided():
        sample_latents(gen, labels, rng=rng_for(0, "b"), steps=50)

    def guided():
        sample_latents(
            gen, labels, rng=rng_for(0, "b"), steps=50, guidance=ModeGuidance(modes, lam=0.1, t_sg=25)
        )

    def one_at_a_time():
        for j in range(args.ipc):
            sample_latents(
                gen,
                labels[j : j + 1],
                rng=rng_for(0, "b", j),
                steps=50,
                guidance=ModeGuidance(modes[j : j + 1], lam=0.1, t_sg=25),
            )

    def forwards(rows: int):
        x, t = torch.randn(rows, *gen.latent_shape), torch.tensor(500)
        cond = torch.arange(rows) % data.num_classes
        return lambda: [gen.denoise(x, t, cond) for _ in range(10)]

    t_unguided, t_guided, t_single = timed_together([unguided, guided, one_at_a_time], args.repeats)
    with torch.no_grad():  # the denoiser alone: what batching can gain on this machine at most
        t_rows_one, t_rows_all = timed(forwards(2), args.repeats), timed(forwards(2 * args.ipc), args.repeats)
    print(f"torch threads: {torch.get_num_threads()}, ipc {args.ipc}, 50 DDPM steps, CFG 3")
    print(
        f"unguided class batch: {t_unguided:.3f} s  guided: {t_guided:.3f} s  "
        f"ratio guided/unguided = {t_guided / t_unguided:.3f} (target <= 1.03)"
    )
    print(
        f"one sample at a time: {t_single:.3f} s  batched speed-up = "
        f"{t_single / t_guided:.2f}x (target >= 5x)"
    )
    print(
        f"denoiser alone: {2 * args.ipc} rows {100 * t_rows_all:.1f} ms, 2 rows {100 * t_rows_one:.1f} ms "
        f"per forward -> batching bound {args.ipc * t_rows_one / t_rows_all:.2f}x without the loop"
    )


if __name__ == "__main__":
    main()

"""ManifoldGD benchmark: per-step cost of the manifold term at DiT-XL/2's latent size.

D = 4096 (4x32x32), a batch of 10 samples, 300 cloud points, K = 12, tangent_dim = 3. Compares
the hook's term (``manifoldgd``: noised clouds + thin SVD of the K x D centred neighbours,
batched) with the public code's way (the same clouds, then per sample the D x D covariance
and its eigendecomposition), and prints the ratio (target >= 100x). Both share the cloud
construction; the tangent-plane part alone is printed too. The direct path costs tens of
seconds per sample on a CPU, so it is timed on ``--direct-samples`` samples and scaled to the
batch (it is a loop over samples: linear in the batch).

    python experiments/bench_manifoldgd.py [--batch 10] [--repeats 3] [--direct-samples 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from ddcore.sampling import StepContext  # noqa: E402
from manifoldgd.guidance import ManifoldGuidance, ManifoldSettings  # noqa: E402
from manifoldgd.manifold import normal_step  # noqa: E402
from mgd3.guidance import ModeGuidance  # noqa: E402
from tests.manifold_reference import direct_normal_step  # noqa: E402

SHAPE = (4, 32, 32)


def timed(fn, repeats: int) -> float:
    """Best of ``repeats`` runs after one warm-up, synchronised on GPUs."""
    best = float("inf")
    for i in range(repeats + 1):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if i:
            best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--direct-samples", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(args.batch, *SHAPE, generator=g)
    x = (0.6 * centres + 0.8 * torch.randn(args.batch, *SHAPE, generator=g)).to(device)
    settings = ManifoldSettings()
    hook = ManifoldGuidance(ModeGuidance(centres, 0.1, 25), centres, settings, steps=50, seed=0)
    ctx = StepContext(
        index=40,
        timestep=torch.tensor(800),
        x0_hat=x,
        sigma=torch.tensor(0.1),
        alpha_bar=torch.tensor(0.36),
        x=x,
        alpha_bar_prev=torch.tensor(0.38),
    )
    clouds = hook.clouds(ctx)
    flat = x.flatten(1)
    kw = dict(
        neighbours=settings.neighbours,
        tangent_dim=settings.tangent_dim,
        bandwidth=settings.bandwidth,
        scale=settings.scale,
    )
    n = min(args.direct_samples, args.batch)
    fast = normal_step(flat, clouds, **kw)
    exact = direct_normal_step(
        flat[:n], clouds[:n], settings.neighbours, settings.tangent_dim, settings.bandwidth, settings.scale
    )
    cloud_s = timed(lambda: hook.clouds(ctx), args.repeats)
    svd_s = timed(lambda: normal_step(flat, clouds, **kw), args.repeats)
    eigh_s = (
        timed(
            lambda: direct_normal_step(
                flat[:n],
                clouds[:n],
                settings.neighbours,
                settings.tangent_dim,
                settings.bandwidth,
                settings.scale,
            ),
            max(1, args.repeats // 3),
        )
        * args.batch
        / n
    )
    print(
        f"manifold term, D={flat.shape[1]}, batch {args.batch}, {settings.cloud_points} cloud "
        f"points, K={settings.neighbours}, tangent_dim={settings.tangent_dim}, {device}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"  max |fast - direct| over {n} sample(s): {float((fast[:n] - exact).abs().max()):.2e}")
    print(f"  clouds (shared by both):        {cloud_s * 1e3:9.1f} ms/step")
    print(f"  tangent step, batched SVD:      {svd_s * 1e3:9.1f} ms/step")
    print(
        f"  tangent step, D x D eigh:       {eigh_s * 1e3:9.1f} ms/step"
        + (f"  (timed on {n} sample(s), x{args.batch / n:g})" if n < args.batch else "")
    )
    print(f"  tangent step ratio:             {eigh_s / svd_s:9.0f}x")
    print(
        f"  whole term per step (clouds + step): {(cloud_s + svd_s) * 1e3:.1f} ms vs "
        f"{(cloud_s + eigh_s) * 1e3:.1f} ms = {(cloud_s + eigh_s) / (cloud_s + svd_s):.0f}x "
        "faster (target >= 100x)"
    )


if __name__ == "__main__":
    main()

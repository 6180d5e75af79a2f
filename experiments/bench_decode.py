"""Decoding an image folder for latents: DataLoader workers vs the one-process loop.

    python experiments/bench_decode.py [--images 2000] [--workers 2]

Writes ImageNet-sized JPEGs (500 x 375) to a temporary folder, then runs
``ddcore.latent_cache.encode_class`` with a pixel-space codec at 256 px (so the encoder costs
nothing and the number is the decoding), once with ``workers=0`` and once with ``--workers``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import ddcore  # noqa: E402,F401
from ddcore.data.base import FileSource, ImageClassificationData  # noqa: E402
from ddcore.generators.base import ClassConditionalGenerator, PixelIdentityCodec  # noqa: E402
from ddcore.latent_cache import encode_class  # noqa: E402


class Identity(torch.nn.Module):
    """Stands in for a denoiser: the benchmark only encodes (pixel space, no VAE)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = type("Config", (), {"in_channels": 3, "out_channels": 3})


def folder_of_jpegs(root: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = root / f"{i:05d}.jpg"
        Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        paths = folder_of_jpegs(Path(tmp), args.images)
        source = FileSource(paths, [0] * len(paths), resolution=256, channels=3)
        data = ImageClassificationData("jpegs", ["c0"], ["c0"], 256, 3, source, source)
        generator = ClassConditionalGenerator(
            Identity(),
            PixelIdentityCodec(),
            {},
            resolution=256,
            image_channels=3,
            model_classes=1,
            null_label=1,
        )
        rates = {}
        for workers in (0, args.workers):
            start = time.perf_counter()
            latents = encode_class(generator, data, 0, batch_size=64, workers=workers)
            rates[workers] = len(latents) / (time.perf_counter() - start)
            print(f"workers={workers}: {rates[workers]:.1f} images/s ({len(latents)} images)")
    print(f"ratio: {rates[args.workers] / rates[0]:.2f}x with {args.workers} workers")
    return 0


if __name__ == "__main__":
    sys.exit(main())

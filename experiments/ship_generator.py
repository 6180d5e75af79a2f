"""Copy a trained generator from the cache into the package's shipped weights, with its hash.

    python run.py task=train_generator dataset=digits generator=unet_tiny    # prints the folder
    python experiments/ship_generator.py .cache/generators/digits-unet_tiny-<key>

Copies ``denoiser/`` (config + safetensors), ``scheduler/``, a latent generator's ``vae/`` and
``meta.json`` (not the Lightning checkpoint with its optimizer state) to
``ddcore/generators/weights/<folder name>/`` and writes the weights' sha256 (denoiser, VAE) into
``SHA256SUMS``, which the loader checks. The folder name is the cache
key, so a run whose dataset + config match finds the shipped copy instead of training.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ddcore.generators.self_trained.shipped import (  # noqa: E402
    SHIPPED_DIR,
    VAE_WEIGHTS_FILE,
    WEIGHTS_FILE,
    file_sha256,
    shipped_hashes,
)


def ship(folder: Path, root: Path = SHIPPED_DIR) -> str:
    target = root / folder.name
    shutil.rmtree(target, ignore_errors=True)
    parts = ("denoiser", "scheduler", "vae") if (folder / "vae").is_dir() else ("denoiser", "scheduler")
    for part in parts:
        shutil.copytree(folder / part, target / part, copy_function=shutil.copyfile)
    shutil.copyfile(folder / "meta.json", target / "meta.json")
    hashes = shipped_hashes(root)
    hashes[f"{folder.name}/{WEIGHTS_FILE}"] = digest = file_sha256(target / WEIGHTS_FILE)
    if "vae" in parts:  # a latent generator: its VAE is hash-checked too
        hashes[f"{folder.name}/{VAE_WEIGHTS_FILE}"] = file_sha256(target / VAE_WEIGHTS_FILE)
    (root / "SHA256SUMS").write_text("".join(f"{d}  {n}\n" for n, d in sorted(hashes.items())))
    return digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a trained generator's cache folder")
    args = parser.parse_args()
    digest = ship(args.folder.resolve())
    meta = json.loads((args.folder / "meta.json").read_text())
    print(
        f"shipped {args.folder.name}: sha256 {digest}, sample accuracy "
        f"{meta.get('sample_accuracy')}, {meta.get('train_seconds')} s of training"
    )


if __name__ == "__main__":
    main()

"""Weights trained once with ``task=train_generator`` that ship in ``ddcore/generators/weights/``,
in folders named like cache folders, each checked against its sha256 (``SHA256SUMS``) before use."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ddcore.errors import UserError

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "weights"
WEIGHTS_FILE = "denoiser/diffusion_pytorch_model.safetensors"
VAE_WEIGHTS_FILE = "vae/diffusion_pytorch_model.safetensors"  # a latent generator's VAE


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def shipped_hashes(root: Path | None = None) -> dict[str, str]:
    """``SHA256SUMS`` (``<sha256>  <folder>/<file>`` lines, as sha256sum writes them)."""
    sums = Path(root or SHIPPED_DIR) / "SHA256SUMS"
    if not sums.is_file():
        return {}
    pairs = (line.split(maxsplit=1) for line in sums.read_text().splitlines() if line.strip())
    return {name.strip().lstrip("*"): digest for digest, name in pairs}


def shipped_folder(folder_name: str, root: Path | None = None) -> Path | None:
    """The shipped weights for this cache folder name, hash-checked (the denoiser's, and a
    latent generator's VAE's); None when none ship."""
    root = Path(root or SHIPPED_DIR)
    folder = root / folder_name
    if not (folder / "meta.json").is_file():
        return None
    hashes = shipped_hashes(root)
    files = [WEIGHTS_FILE] + ([VAE_WEIGHTS_FILE] if (folder / "vae").is_dir() else [])
    for name in files:
        expected, actual = hashes.get(f"{folder_name}/{name}"), file_sha256(folder / name)
        if expected != actual:
            raise UserError(
                f"shipped generator weights {folder / name} have sha256 {actual}, "
                f"expected {expected} ({root / 'SHA256SUMS'}); reinstall the package or "
                "train your own with generator.retrain=true"
            )
    return folder

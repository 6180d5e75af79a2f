"""A small ``AutoencoderKL`` the framework trains on the target dataset (latent generators).

MGD^3 finds modes by k-means in the latent space of the generator's VAE; for the CPU-sized sets
this module gives the self-trained generators such a space. Trained with Lightning on the train
split (L1 + MSE reconstruction, a small KL weight), then the scaling factor is set so that the
latents (``latent_dist.mean * scaling_factor``, as ``VAECodec`` encodes) have unit variance on
the train set, as SD's ``scaling_factor`` does for its VAE. Saved with ``save_pretrained`` in a
cache folder keyed by the data's identity and the VAE settings, with the reconstruction error
on the test split in ``meta.json``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from ddcore.data.base import ImageClassificationData
from ddcore.data.identity import data_identity
from ddcore.errors import UserError
from ddcore.files import built_in_temp, short_hash, write_json
from ddcore.progress import ProgressLog

log = logging.getLogger(__name__)


def build_vae(
    channels: int,
    latent_channels: int = 4,
    block_out_channels=(32, 64),
    layers_per_block: int = 1,
    norm_num_groups: int = 8,
) -> AutoencoderKL:
    """Downsamples by 2^(len(block_out_channels) - 1)."""
    blocks = len(block_out_channels)
    return AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        latent_channels=latent_channels,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        norm_num_groups=norm_num_groups,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        scaling_factor=1.0,
    )


def downsample_factor(arch: dict) -> int:
    return 2 ** (len(arch.get("block_out_channels", (32, 64))) - 1)


def check_resolution(resolution: int, arch: dict) -> None:
    factor = downsample_factor(arch)
    if resolution % factor:
        raise UserError(
            f"the VAE downsamples by {factor}, which does not divide the image size "
            f"{resolution} (use generator.vae.arch.block_out_channels with fewer "
            "levels, or a resolution divisible by it)"
        )


class VAETraining(pl.LightningModule):
    """Reconstruction (L1 + MSE) + kl_weight * KL, images in [-1, 1]."""

    def __init__(self, vae: AutoencoderKL, lr: float, kl_weight: float, seed: int):
        super().__init__()
        self.vae, self.lr, self.kl_weight, self.seed = vae, lr, kl_weight, seed
        self._rng: torch.Generator | None = None

    def training_step(self, batch, batch_idx):
        x = batch[0] * 2 - 1
        if self._rng is None or self._rng.device != x.device:
            self._rng = torch.Generator(device=x.device).manual_seed(self.seed)
        dist = self.vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=self._rng, device=x.device)
        recon = self.vae.decode(z).sample
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + self.kl_weight * dist.kl().mean()
        self.log("vae/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.vae.parameters(), lr=self.lr)


@torch.no_grad()
def latent_std(vae: AutoencoderKL, images01: torch.Tensor, batch_size: int = 256) -> float:
    means = [vae.encode(chunk * 2 - 1).latent_dist.mean for chunk in images01.split(batch_size)]
    return float(torch.cat(means).std())


@torch.no_grad()
def reconstruction_mse(vae: AutoencoderKL, images01: torch.Tensor, batch_size: int = 256) -> float:
    """Mean squared error in [0, 1] pixel units of decode(encode(x).mean)."""
    errors = []
    for chunk in images01.split(batch_size):
        recon = vae.decode(vae.encode(chunk * 2 - 1).latent_dist.mean).sample
        errors.append(((recon.clamp(-1, 1) + 1) / 2 - chunk).pow(2).flatten(1).mean(1))
    return float(torch.cat(errors).mean())


def train_vae(data: ImageClassificationData, spec: dict, out_dir: Path, trainer_kwargs: dict) -> dict:
    """Train into ``out_dir/vae`` (with the unit-variance scaling factor); returns the meta."""
    arch, train = spec["arch"], spec["train"]
    pl.seed_everything(spec["seed"], workers=True, verbose=False)
    vae = build_vae(data.channels, **arch)
    images = data.train.load(range(len(data.train)))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images),
        batch_size=train["batch_size"],
        shuffle=True,
        generator=torch.Generator().manual_seed(spec["seed"]),
    )
    module = VAETraining(vae, lr=train["lr"], kl_weight=train["kl_weight"], seed=spec["seed"])
    planned = train["epochs"] * len(loader)
    budget = {"max_time": {"seconds": round(60 * train["max_minutes"])}} if train.get("max_minutes") else {}
    trainer = pl.Trainer(
        max_epochs=-1,
        max_steps=planned,  # = epochs passes; a max_minutes budget may stop it earlier
        **budget,
        logger=False,
        enable_checkpointing=False,
        callbacks=[ProgressLog(f"train VAE on {data.name}")],
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_kwargs,
    )
    start = time.perf_counter()
    trainer.fit(module, loader)
    vae = vae.cpu().eval()
    scaling = 1.0 / max(latent_std(vae, images), 1e-6)
    vae.register_to_config(scaling_factor=scaling)
    vae.save_pretrained(out_dir / "vae")
    test = data.test.load(range(len(data.test)))
    if trainer.global_step < planned:
        log.warning(
            f"VAE on {data.name}: stopped by the {train['max_minutes']}-minute budget after "
            f"{trainer.global_step} of {planned} steps"
        )
    return {
        "train_seconds": round(time.perf_counter() - start, 1),
        "steps": trainer.global_step,
        "planned_steps": planned,
        "scaling_factor": scaling,
        "test_reconstruction_mse": reconstruction_mse(vae, test),
        "train_reconstruction_mse": reconstruction_mse(vae, images),
    }


def load_or_train_vae(
    data: ImageClassificationData,
    *,
    cache_dir: str,
    arch: dict | None = None,
    train: dict | None = None,
    seed: int = 0,
    retrain: bool = False,
    trainer_kwargs: dict | None = None,
    path: str | None = None,
) -> tuple[AutoencoderKL, dict]:
    """The cached VAE for (data, settings), trained first if there is none; (vae, meta).
    ``path``: a folder written by an earlier training (its meta must name this dataset)."""
    arch = dict(arch or {})
    train = {"epochs": 20, "batch_size": 128, "lr": 1e-3, "kl_weight": 1e-6, **(train or {})}
    check_resolution(data.resolution, arch)
    spec = {"arch": arch, "train": train, "seed": seed}
    identity = data_identity(data)
    folder = Path(cache_dir) / f"{data.name}-vae-{short_hash({'data': identity, **spec}, 12)}"
    if path is not None:
        folder = Path(path)
        if not (folder / "meta.json").is_file():
            raise UserError(
                f"generator.vae.path={path} holds no trained VAE (meta.json); leave it unset to train one"
            )
    elif retrain:
        shutil.rmtree(folder, ignore_errors=True)
    if not (folder / "meta.json").is_file():
        with built_in_temp(folder, "generator.cache_dir") as tmp:
            if tmp is not None:  # None: another process trained it while this one waited
                meta = {
                    "data": identity,
                    "spec": spec,
                    **train_vae(data, spec, tmp, dict(trainer_kwargs or {})),
                }
                write_json(tmp / "meta.json", meta)
                log.info(
                    f"VAE on {data.name}: test reconstruction MSE {meta['test_reconstruction_mse']:.4f}"
                    f", scaling factor {meta['scaling_factor']:.3f}"
                )
    meta = json.loads((folder / "meta.json").read_text())
    trained_on, here = meta.get("data", {}), identity
    if (trained_on.get("name"), trained_on.get("classes")) != (here["name"], here["classes"]):
        raise UserError(
            f"the VAE in {folder} was trained on {trained_on.get('name')!r}, not on "
            f"{data.name} (unset generator.vae.path to train one for {data.name})"
        )
    return AutoencoderKL.from_pretrained(folder / "vae").eval(), meta

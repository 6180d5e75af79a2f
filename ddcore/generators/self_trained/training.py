"""Training a self-trained generator's denoiser with Lightning: eps-prediction DDPM on the train
split (pixels or a VAE's latents), for a number of epochs within a wall-time budget, saved with
``save_pretrained`` (the EMA weights when ``ema_decay`` > 0)."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from lightning.pytorch.loggers import CSVLogger

from ddcore.data.base import ImageClassificationData, resize_images
from ddcore.errors import UserError
from ddcore.generators.base import Codec, PixelIdentityCodec
from ddcore.generators.self_trained.denoiser import build_denoiser, null_label_of
from ddcore.generators.self_trained.ema import ema_copy, update_ema
from ddcore.progress import ProgressLog

log = logging.getLogger(__name__)
LOSS_WEIGHTINGS = ("none", "min_snr")
LR_SCHEDULES = ("constant", "cosine")


def loss_weights(scheduler: DDPMScheduler, t: torch.Tensor, weighting: str, gamma: float):
    """Per-sample weights of the eps loss. ``min_snr``: min(SNR_t, gamma) / SNR_t (Min-SNR-gamma,
    Hang et al. 2023, eq. 9 for eps prediction): low-noise steps, which only polish details,
    stop dominating the gradient."""
    if weighting == "none":
        return torch.ones_like(t, dtype=torch.float32)
    alpha_bar = scheduler.alphas_cumprod.to(t.device)[t]
    snr = alpha_bar / (1 - alpha_bar)
    return snr.clamp(max=gamma) / snr


class DenoiserTraining(pl.LightningModule):
    """eps-prediction DDPM training: L = w_t ||eps_theta(x_t, t, y) - eps||^2."""

    def __init__(
        self,
        denoiser,
        scheduler: DDPMScheduler,
        null_label: int,
        lr: float,
        warmup_steps: int,
        label_dropout: float,
        seed: int,
        ema_decay: float = 0.0,
        loss_weighting: str = "none",
        snr_gamma: float = 5.0,
        lr_schedule: str = "constant",
        total_steps: int = 0,
    ):
        super().__init__()
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise UserError(
                f"unknown generator.train.loss_weighting {loss_weighting!r} "
                f"(use one of: {', '.join(LOSS_WEIGHTINGS)})"
            )
        if lr_schedule not in LR_SCHEDULES:
            raise UserError(
                f"unknown generator.train.lr_schedule {lr_schedule!r} (use one of: {', '.join(LR_SCHEDULES)})"
            )
        self.denoiser = denoiser
        self.ema_decay = ema_decay
        self.ema = ema_copy(denoiser) if ema_decay > 0 else None
        self.scheduler = scheduler
        self.null_label = null_label
        self.lr, self.warmup_steps = lr, warmup_steps
        self.lr_schedule, self.total_steps = lr_schedule, total_steps
        self.label_dropout = label_dropout
        self.loss_weighting, self.snr_gamma = loss_weighting, snr_gamma
        self.seed = seed
        self._rng: torch.Generator | None = None

    def rng(self, device) -> torch.Generator:
        if self._rng is None or self._rng.device != device:
            self._rng = torch.Generator(device=device).manual_seed(self.seed)
        return self._rng

    def training_step(self, batch, batch_idx):
        x0, labels = batch  # clean latents: pixels in [-1, 1], or the VAE's latents
        g = self.rng(x0.device)
        n = x0.shape[0]
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (n,), generator=g, device=x0.device)
        noise = torch.randn(x0.shape, generator=g, device=x0.device)
        drop = torch.rand(n, generator=g, device=x0.device) < self.label_dropout
        labels = torch.where(drop, torch.full_like(labels, self.null_label), labels)
        x_t = self.scheduler.add_noise(x0, noise, t)
        pred = self.denoiser(x_t, t, class_labels=labels).sample
        per_sample = F.mse_loss(pred.float(), noise, reduction="none").flatten(1).mean(1)
        loss = (loss_weights(self.scheduler, t, self.loss_weighting, self.snr_gamma) * per_sample).mean()
        self.log("generator/loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.ema is not None:
            update_ema(self.ema, self.denoiser, self.global_step, self.ema_decay)

    def sampling_model(self):
        """The weights to sample with: the EMA copy when there is one."""
        return self.ema if self.ema is not None else self.denoiser

    def lr_factor(self, step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, self.warmup_steps))
        if self.lr_schedule == "constant" or self.total_steps <= self.warmup_steps:
            return warm
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * max(0.0, progress))))

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.denoiser.parameters(), lr=self.lr, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: self.lr_factor(step))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def fit_length(train: dict, n_images: int) -> dict:
    """Lightning's stopping arguments from ``epochs`` (passes over the data), an optional
    ``steps`` cap and the ``max_minutes`` wall-time budget; ``planned`` = optimizer steps."""
    epochs, steps = train.get("epochs"), train.get("steps")
    if not epochs and not steps:
        raise UserError("generator.train needs epochs (passes over the train split) or steps")
    per_epoch = max(1, n_images // train["batch_size"])
    planned = min(x for x in (epochs and epochs * per_epoch, steps) if x)
    kwargs = {"max_epochs": -1, "max_steps": planned}  # in steps: progress lines within epochs
    if train.get("max_minutes"):
        kwargs["max_time"] = {"seconds": round(60 * train["max_minutes"])}
    return {"kwargs": kwargs, "planned": planned, "per_epoch": per_epoch}


def train_denoiser(
    data: ImageClassificationData,
    spec: dict,
    out_dir: Path,
    trainer_kwargs: dict,
    callbacks: list | None = None,
    codec: Codec | None = None,
):
    """Train and save into ``out_dir`` (denoiser/, scheduler/, checkpoints/, logs/ CSV curves).
    ``codec``: pixel space (default) or a ``VAECodec`` (a latent generator, ``generator.vae``)."""
    train = spec["train"]
    pl.seed_everything(spec["seed"], workers=True, verbose=False)
    codec = codec or PixelIdentityCodec()
    channels, size, _ = codec.latent_shape(data.channels, spec["resolution"])
    denoiser = build_denoiser(spec["family"], channels, size, data.num_classes, spec["arch"])
    scheduler = DDPMScheduler(**spec["schedule"])
    images = resize_images(data.train.load(range(len(data.train))), spec["resolution"])
    with torch.no_grad():  # the training targets, once: pixels in [-1, 1] or VAE latents
        images = torch.cat([codec.encode(chunk) for chunk in images.split(256)])
    length = fit_length(train, len(images))
    module = DenoiserTraining(
        denoiser,
        scheduler,
        null_label_of(denoiser),
        lr=train["lr"],
        warmup_steps=train["warmup_steps"],
        label_dropout=train["label_dropout"],
        seed=spec["seed"],
        ema_decay=train.get("ema_decay", 0.0),
        loss_weighting=train.get("loss_weighting", "none"),
        snr_gamma=train.get("snr_gamma", 5.0),
        lr_schedule=train.get("lr_schedule", "constant"),
        total_steps=length["planned"],
    )
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images, data.train.labels),
        batch_size=train["batch_size"],
        shuffle=True,
        drop_last=len(images) > train["batch_size"],
        generator=torch.Generator().manual_seed(spec["seed"]),
    )
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=out_dir / "checkpoints", save_last=True, save_top_k=0)
    trainer = pl.Trainer(
        **length["kwargs"],
        logger=CSVLogger(out_dir, name="logs"),
        callbacks=[ProgressLog(f"train {spec['name']}"), checkpoint, *(callbacks or [])],
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,
        **trainer_kwargs,
    )
    n_params = sum(p.numel() for p in denoiser.parameters())
    budget = train.get("max_minutes")
    log.info(
        f"training {spec['name']} ({spec['family']}, {n_params / 1e6:.2f}M parameters) on "
        f"{data.name}: {length['planned']} steps ({length['per_epoch']} per epoch)"
        + (f", at most {budget} min" if budget else "")
    )
    start = time.perf_counter()
    trainer.fit(module, loader)
    seconds = time.perf_counter() - start
    if trainer.global_step < length["planned"]:
        log.warning(
            f"{spec['name']}: stopped by the time budget (generator.train.max_minutes="
            f"{budget}) after {trainer.global_step}/{length['planned']} steps"
        )
    module.sampling_model().save_pretrained(out_dir / "denoiser")
    scheduler.save_config(out_dir / "scheduler")
    return {
        "train_seconds": round(seconds, 1),
        "parameters": n_params,
        "steps": trainer.global_step,
        "planned_steps": length["planned"],
        "epochs": round(trainer.global_step / length["per_epoch"], 2),
        "final_loss": float(trainer.callback_metrics.get("generator/loss", float("nan"))),
    }

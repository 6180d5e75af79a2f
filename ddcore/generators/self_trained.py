"""The small class-conditional generators the framework trains itself (``generator=unet_tiny``,
``generator=dit_tiny``).

Trained with Lightning on the dataset's train split (pixel space) for a number of epochs (so the
length follows the data) within a wall-time budget, saved with ``save_pretrained`` into a cache
folder keyed by dataset + train-image digest + generator config, and reused by every later run
with the same key. Label dropout to the null class (explicit generator, p = ``label_dropout``)
trains the unconditional branch that classifier-free guidance needs.

At the end of training a probe (``ddcore/generators/probe.py``) measures how many samples a
real-data classifier recognises as their class; below ``warn_below`` every run using the
generator says so in one line (run log and ``metrics.json``).

Weights trained once with ``task=train_generator`` ship in ``ddcore/generators/weights/``, in
folders named like cache folders: when the key of a run matches one, its sha256 (``SHA256SUMS``)
is checked and it is used instead of training; ``generator.retrain=true`` trains from scratch.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import shutil
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, DiTTransformer2DModel, UNet2DModel
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf

from ddcore.data.base import ImageClassificationData, resize_images
from ddcore.errors import UserError
from ddcore.files import short_hash
from ddcore.generators.base import ClassConditionalGenerator, Codec, PixelIdentityCodec, VAECodec
from ddcore.generators.dit import build_dit
from ddcore.progress import ProgressLog

log = logging.getLogger(__name__)
FAMILIES = ("dit", "unet")
LOSS_WEIGHTINGS = ("none", "min_snr")
LR_SCHEDULES = ("constant", "cosine")
SHIPPED_DIR = Path(__file__).parent / "weights"
WEIGHTS_FILE = "denoiser/diffusion_pytorch_model.safetensors"
VAE_WEIGHTS_FILE = "vae/diffusion_pytorch_model.safetensors"  # a latent generator's VAE


def _plain(obj) -> dict:
    return OmegaConf.to_container(obj, resolve=True) if isinstance(obj, DictConfig) else dict(obj)


def build_denoiser(family: str, channels: int, resolution: int, num_classes: int, arch: dict):
    """A class-conditional denoiser with one extra (null) class embedding for CFG."""
    if family == "dit":
        model = build_dit(channels, resolution, num_classes, **arch)
        for module in model.modules():  # we drop labels ourselves, with an explicit generator
            if hasattr(module, "token_drop"):
                module.dropout_prob = 0.0
        return model
    if family == "unet":
        return UNet2DModel(
            sample_size=resolution,
            in_channels=channels,
            out_channels=channels,
            num_class_embeds=num_classes + 1,
            **arch,
        )
    raise UserError(f"unknown generator.family {family!r} (use one of: {', '.join(FAMILIES)})")


def null_label_of(denoiser) -> int:
    if isinstance(denoiser, DiTTransformer2DModel):
        return int(denoiser.config.num_embeds_ada_norm)
    return int(denoiser.config.num_class_embeds) - 1


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
        self.ema = copy.deepcopy(denoiser).requires_grad_(False) if ema_decay > 0 else None
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

    @torch.no_grad()
    def on_train_batch_end(self, outputs, batch, batch_idx):
        """EMA of the weights, with the usual warm-up (n+1)/(n+10) so early steps count."""
        if self.ema is None:
            return
        step = self.global_step
        decay = min(self.ema_decay, (1 + step) / (10 + step))
        for ema_p, p in zip(self.ema.parameters(), self.denoiser.parameters()):
            ema_p.lerp_(p, 1.0 - decay)

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


def train_digest(data: ImageClassificationData) -> str:
    """Content digest of the train split (images via ``ImageSource.digest``, and labels)."""
    images = data.train.digest(range(len(data.train)))
    labels = hashlib.sha256(data.train.labels.numpy().tobytes()).hexdigest()
    return hashlib.sha256(f"{images}:{labels}".encode()).hexdigest()


def cache_key(data: ImageClassificationData, spec: dict) -> str:
    identity = {
        "dataset": data.name,
        "description": data.description,
        "class_ids": data.class_ids,
        "resolution": data.resolution,
        "channels": data.channels,
        "n_train": len(data.train),
        "train_digest": train_digest(data),
        **spec,
    }
    return short_hash(identity, 12)  # also the shipped weights' folder names: keep its form


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


def load_saved(folder: Path, family: str):
    cls = DiTTransformer2DModel if family == "dit" else UNet2DModel
    return cls.from_pretrained(folder / "denoiser"), dict(DDPMScheduler.load_config(folder / "scheduler"))


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


def load_or_train(
    data: ImageClassificationData,
    *,
    cache_dir: str,
    family: str = "dit",
    arch: dict | None = None,
    train: dict | None = None,
    schedule: dict | None = None,
    resolution: int = 16,
    cfg_scale: float = 3.0,
    seed: int = 0,
    name: str = "dit_tiny",
    retrain: bool = False,
    trainer_kwargs: dict | None = None,
    probe_per_class: int = 0,
    warn_below: float = 0.8,
    overrides: dict | None = None,
    timestep_spacing: dict | None = None,
    vae: dict | None = None,
) -> ClassConditionalGenerator:
    """The generator for (dataset, config): shipped, cached, or trained first if neither.

    ``overrides`` replaces ``arch``/``train``/``probe_per_class``/``vae`` wholesale (``debug=tiny``
    uses it to shrink the model without touching configs of generators that have no such keys).
    ``vae``: settings of the framework's VAE (``ddcore/generators/vae.py``; ``arch``, ``train``,
    ``seed``): the denoiser then learns its latents (a latent generator, ``generator=ldm_tiny``).
    """
    overrides = _plain(overrides or {})
    arch, train = overrides.get("arch", arch), overrides.get("train", train)
    probe_per_class = overrides.get("probe_per_class", probe_per_class)
    vae = overrides.get("vae", vae)
    spec = {
        "name": name,
        "family": family,
        "arch": _plain(arch or {}),
        "train": _plain(train or {}),
        "schedule": _plain(schedule or {}),
        "resolution": resolution,
        "seed": seed,
    }
    if vae:  # only latent generators carry it: pixel generators keep their keys
        spec["vae"] = _plain(vae)
    grid = _plain(timestep_spacing) if timestep_spacing else None  # sampling grid (ddcore.sampling)
    folder = Path(cache_dir) / f"{data.name}-{name}-{cache_key(data, spec)}"
    if retrain and folder.exists():
        shutil.rmtree(folder)
    shipped = None if retrain or (folder / "meta.json").is_file() else shipped_folder(folder.name)
    if shipped is not None:
        log.info(f"using the shipped generator {shipped} (generator.retrain=true trains anew)")
        folder = shipped
    elif not (folder / "meta.json").is_file():
        codec = latent_codec(data, spec, cache_dir, trainer_kwargs)
        _train_into(folder, data, spec, _plain(trainer_kwargs or {}), probe_per_class, cfg_scale, grid, codec)
    else:
        log.info(f"reusing trained generator {folder}")
    generator = saved_generator(folder, spec, data, cfg_scale, grid)
    meta = read_meta(folder)
    if meta.get("class_ids") != data.class_ids:
        raise UserError(
            f"cached generator {folder} was trained on other classes than "
            f"{data.name} has (delete the folder or use generator.retrain=true)"
        )
    generator.folder = folder
    generator.train_meta = {k: v for k, v in meta.items() if k not in ("spec", "class_ids")}
    generator.sample_accuracy = meta.get("sample_accuracy")
    generator.sample_warning = sample_warning(generator.sample_accuracy, warn_below, name, data)
    if generator.sample_warning:
        log.warning(generator.sample_warning)
    return generator


def sample_warning(
    accuracy: float | None, threshold: float, name: str, data: ImageClassificationData
) -> str | None:
    """One line when too few samples look like their class (None when fine or not probed)."""
    if accuracy is None or accuracy >= threshold:
        return None
    return (
        f"generator {name}: only {accuracy:.1%} of its samples are recognised as their class "
        f"by a probe trained on real {data.name} (generator.warn_below={threshold}); sets "
        "distilled from it will be off-class (train longer: generator.train.epochs / "
        "max_minutes)"
    )


def saved_generator(
    folder: Path,
    spec: dict,
    data: ImageClassificationData,
    cfg_scale: float,
    timestep_spacing: dict | None = None,
) -> ClassConditionalGenerator:
    denoiser, scheduler_config = load_saved(folder, spec["family"])
    codec = VAECodec(AutoencoderKL.from_pretrained(folder / "vae")) if "vae" in spec else PixelIdentityCodec()
    return ClassConditionalGenerator(
        denoiser,
        codec,
        scheduler_config,
        model_classes=data.num_classes,
        null_label=null_label_of(denoiser),
        resolution=spec["resolution"],
        image_channels=data.channels,
        cfg_scale=cfg_scale,
        name=spec["name"],
        timestep_spacing=timestep_spacing,
    )


def latent_codec(data, spec: dict, cache_dir: str, trainer_kwargs) -> VAECodec | None:
    """The VAE codec a latent generator trains on (trained and cached first), else None."""
    if "vae" not in spec:
        return None
    from ddcore.generators.vae import load_or_train_vae

    vae, meta = load_or_train_vae(
        data,
        cache_dir=str(Path(cache_dir) / "vaes"),
        trainer_kwargs=_plain(trainer_kwargs or {}),
        **spec["vae"],
    )
    codec = VAECodec(vae)
    codec.meta = meta
    return codec


def _train_into(folder: Path, data, spec, trainer_kwargs, probe_per_class, cfg_scale, grid, codec=None):
    """Train in a temporary folder and rename it at the end: a killed run leaves no cache entry."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    meta = {
        "spec": spec,
        "dataset": data.name,
        "class_ids": data.class_ids,
        "cache_key": folder.name,
        **train_denoiser(data, spec, tmp, trainer_kwargs, codec=codec),
    }
    if codec is not None:  # the generator folder holds its own VAE
        codec.vae.save_pretrained(tmp / "vae")
        meta["vae"] = {
            k: codec.meta[k]
            for k in (
                "scaling_factor",
                "test_reconstruction_mse",
                "train_reconstruction_mse",
                "train_seconds",
            )
        }
    if probe_per_class > 0:
        meta.update(run_probe(saved_generator(tmp, spec, data, cfg_scale, grid), data, probe_per_class))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def run_probe(generator, data: ImageClassificationData, per_class: int) -> dict:
    """The end-of-training probe, logged in one line; ``sample_accuracy`` + the full report."""
    from ddcore.generators.probe import probe_report

    start = time.perf_counter()
    report = probe_report(generator, data, per_class)
    report["probe_seconds"] = round(time.perf_counter() - start, 1)
    log.info(
        f"{generator.name}: generated-sample accuracy {report['sample_accuracy']:.3f} "
        f"(probe trained on real {data.name}, {report['probe_real_accuracy']:.3f} on its "
        f"test split); per-class mean pairwise distance {report['diversity_generated']:.3f} "
        f"generated vs {report['diversity_real']:.3f} real"
    )
    return {"sample_accuracy": report["sample_accuracy"], "probe": report}


def read_meta(generator_folder: Path) -> dict:
    return json.loads((Path(generator_folder) / "meta.json").read_text())

"""The small class-conditional generator the framework trains itself (``generator=dit_tiny``).

Trained with Lightning on the dataset's train split (pixel space), saved with
``save_pretrained`` into a cache folder keyed by dataset + generator config, and reused by every
later run with the same key. Label dropout to the null class (explicit generator, p =
``label_dropout``) trains the unconditional branch that classifier-free guidance needs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, DiTTransformer2DModel, UNet2DModel
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf

from ddcore.data.base import ImageClassificationData, resize_images
from ddcore.errors import UserError
from ddcore.generators.base import ClassConditionalGenerator, LatentCodec
from ddcore.generators.dit import build_dit, class_conditional
from ddcore.progress import ProgressLog

log = logging.getLogger(__name__)
FAMILIES = ("dit", "unet")


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
        return UNet2DModel(sample_size=resolution, in_channels=channels, out_channels=channels,
                           num_class_embeds=num_classes + 1, **arch)
    raise UserError(f"unknown generator.family {family!r} (use one of: {', '.join(FAMILIES)})")


def null_label_of(denoiser) -> int:
    if isinstance(denoiser, DiTTransformer2DModel):
        return int(denoiser.config.num_embeds_ada_norm)
    return int(denoiser.config.num_class_embeds) - 1


class DenoiserTraining(pl.LightningModule):
    """eps-prediction DDPM training: L = ||eps_theta(x_t, t, y) - eps||^2."""

    def __init__(self, denoiser, scheduler: DDPMScheduler, null_label: int, lr: float,
                 warmup_steps: int, label_dropout: float, seed: int, ema_decay: float = 0.0):
        super().__init__()
        self.denoiser = denoiser
        self.ema_decay = ema_decay
        self.ema = copy.deepcopy(denoiser).requires_grad_(False) if ema_decay > 0 else None
        self.scheduler = scheduler
        self.null_label = null_label
        self.lr, self.warmup_steps = lr, warmup_steps
        self.label_dropout = label_dropout
        self.seed = seed
        self._rng: torch.Generator | None = None

    def rng(self, device) -> torch.Generator:
        if self._rng is None or self._rng.device != device:
            self._rng = torch.Generator(device=device).manual_seed(self.seed)
        return self._rng

    def training_step(self, batch, batch_idx):
        images01, labels = batch
        x0 = images01 * 2.0 - 1.0
        g = self.rng(x0.device)
        n = x0.shape[0]
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (n,), generator=g,
                          device=x0.device)
        noise = torch.randn(x0.shape, generator=g, device=x0.device)
        drop = torch.rand(n, generator=g, device=x0.device) < self.label_dropout
        labels = torch.where(drop, torch.full_like(labels, self.null_label), labels)
        x_t = self.scheduler.add_noise(x0, noise, t)
        pred = self.denoiser(x_t, t, class_labels=labels).sample
        loss = F.mse_loss(pred.float(), noise)
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

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.denoiser.parameters(), lr=self.lr, weight_decay=0.0)
        warmup = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: min(1.0, (step + 1) / max(1, self.warmup_steps)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": warmup, "interval": "step"}}


def cache_key(data: ImageClassificationData, spec: dict) -> str:
    identity = {"dataset": data.name, "description": data.description,
                "class_ids": data.class_ids, "resolution": data.resolution,
                "channels": data.channels, "n_train": len(data.train), **spec}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def train_denoiser(data: ImageClassificationData, spec: dict, out_dir: Path, trainer_kwargs: dict):
    """Train and save into ``out_dir`` (denoiser/, scheduler/, checkpoints/, logs/ CSV curves)."""
    train = spec["train"]
    pl.seed_everything(spec["seed"], workers=True, verbose=False)
    denoiser = build_denoiser(spec["family"], data.channels, spec["resolution"],
                              data.num_classes, spec["arch"])
    scheduler = DDPMScheduler(**spec["schedule"])
    module = DenoiserTraining(denoiser, scheduler, null_label_of(denoiser), lr=train["lr"],
                              warmup_steps=train["warmup_steps"],
                              label_dropout=train["label_dropout"], seed=spec["seed"],
                              ema_decay=train.get("ema_decay", 0.0))
    images = resize_images(data.train.load(range(len(data.train))), spec["resolution"])
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images, data.train.labels), batch_size=train["batch_size"],
        shuffle=True, drop_last=len(images) > train["batch_size"],
        generator=torch.Generator().manual_seed(spec["seed"]))
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=out_dir / "checkpoints", save_last=True,
                                              save_top_k=0)
    trainer = pl.Trainer(max_steps=train["steps"], logger=CSVLogger(out_dir, name="logs"),
                         callbacks=[ProgressLog(f"train {spec['name']}"), checkpoint],
                         enable_progress_bar=False, enable_model_summary=False,
                         log_every_n_steps=10, **trainer_kwargs)
    n_params = sum(p.numel() for p in denoiser.parameters())
    log.info(f"training {spec['name']} ({spec['family']}, {n_params / 1e6:.2f}M parameters) on "
             f"{data.name} for {train['steps']} steps")
    start = time.perf_counter()
    trainer.fit(module, loader)
    seconds = time.perf_counter() - start
    module.sampling_model().save_pretrained(out_dir / "denoiser")
    scheduler.save_config(out_dir / "scheduler")
    return {"train_seconds": round(seconds, 1), "parameters": n_params,
            "final_loss": float(trainer.callback_metrics.get("generator/loss", float("nan")))}


def load_saved(folder: Path, family: str):
    cls = DiTTransformer2DModel if family == "dit" else UNet2DModel
    return cls.from_pretrained(folder / "denoiser"), dict(DDPMScheduler.load_config(folder / "scheduler"))


def load_or_train(data: ImageClassificationData, *, cache_dir: str, family: str = "dit",
                  arch: dict | None = None, train: dict | None = None,
                  schedule: dict | None = None, resolution: int = 16, cfg_scale: float = 3.0,
                  seed: int = 0, name: str = "dit_tiny", retrain: bool = False,
                  trainer_kwargs: dict | None = None,
                  probe_per_class: int = 0, overrides: dict | None = None,
                  timestep_spacing: dict | None = None) -> ClassConditionalGenerator:
    """The cached generator for (dataset, config), trained first if there is none.

    ``overrides`` replaces ``arch``/``train``/``probe_per_class`` wholesale (``debug=tiny`` uses
    it to shrink the model without touching configs of generators that have no such keys).
    """
    overrides = _plain(overrides or {})
    arch, train = overrides.get("arch", arch), overrides.get("train", train)
    probe_per_class = overrides.get("probe_per_class", probe_per_class)
    spec = {"name": name, "family": family, "arch": _plain(arch or {}), "train": _plain(train or {}),
            "schedule": _plain(schedule or {}), "resolution": resolution, "seed": seed}
    folder = Path(cache_dir) / f"{data.name}-{name}-{cache_key(data, spec)}"
    if retrain and folder.exists():
        shutil.rmtree(folder)
    if not (folder / "meta.json").is_file():
        _train_into(folder, data, spec, _plain(trainer_kwargs or {}), probe_per_class, cfg_scale)
    else:
        log.info(f"reusing trained generator {folder}")
    generator = saved_generator(folder, spec, data, cfg_scale)
    meta = read_meta(folder)
    if meta.get("class_ids") != data.class_ids:
        raise UserError(f"cached generator {folder} was trained on other classes than "
                        f"{data.name} has (delete the folder or use generator.retrain=true)")
    generator.folder = folder
    generator.timestep_spacing = _plain(timestep_spacing) if timestep_spacing else None  # sampling grid
    generator.train_meta = {k: v for k, v in meta.items() if k not in ("spec", "class_ids")}
    generator.sample_accuracy = meta.get("sample_accuracy")
    return generator


def saved_generator(folder: Path, spec: dict, data: ImageClassificationData,
                    cfg_scale: float) -> ClassConditionalGenerator:
    denoiser, scheduler_config = load_saved(folder, spec["family"])
    return class_conditional(
        denoiser, LatentCodec(), scheduler_config, model_classes=data.num_classes,
        null_label=null_label_of(denoiser), class_map=None, resolution=spec["resolution"],
        image_channels=data.channels, cfg_scale=cfg_scale, cfg_channels=None, name=spec["name"])


def _train_into(folder: Path, data, spec, trainer_kwargs, probe_per_class, cfg_scale):
    """Train in a temporary folder and rename it at the end: a killed run leaves no cache entry."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    meta = {"spec": spec, "dataset": data.name, "class_ids": data.class_ids,
            **train_denoiser(data, spec, tmp, trainer_kwargs)}
    if probe_per_class > 0:
        from ddcore.generators.probe import generated_sample_accuracy

        generator = saved_generator(tmp, spec, data, cfg_scale)
        meta["sample_accuracy"] = generated_sample_accuracy(generator, data, probe_per_class)
        log.info(f"{spec['name']}: generated-sample accuracy {meta['sample_accuracy']:.3f} "
                 f"(probe classifier trained on real {data.name})")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def read_meta(generator_folder: Path) -> dict:
    return json.loads((Path(generator_folder) / "meta.json").read_text())

"""MinimaxDiffusion fine-tuning (Gu et al., CVPR 2024; official code vimar-gu/MinimaxDiffusion).

A class-conditional generator is fine-tuned on the train latents of a chunk of classes with the
eps-MSE diffusion loss plus two terms on the predicted clean latent x0_pred (flattened):

- representativeness: lambda_r * (1 - min cos(x0_pred, real memory of its class)),
- diversity: lambda_d * max cos(x0_pred, pseudo memory of its class),

the min / max taken over every (batch sample of class c, memory item) pair, each class's terms
divided by the number of distinct classes in the batch (``minimax_terms``). The memories are
per-class FIFOs of ``memory_size`` real latents and detached x0 predictions, updated after the
terms are computed; a class's terms start once its memory is non-empty (train_dit.py).

Only a few parameters train (DiffFit-style, ``TRAINABLE``); their EMA is what gets saved, in a
cache folder keyed by the base weights' digest, the chunk's classes and their image digests, the
encoder and every setting (``load_or_finetune``). Training runs in ``<folder>.tmp`` with
Lightning checkpoints, so a killed fine-tune resumes from its last checkpoint; the folder is
renamed into place at the end, and a rerun reads it without training.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import logging
import shutil
import time
from fnmatch import fnmatchcase
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from safetensors.torch import load_file, save_file

from ddcore.data.base import ImageClassificationData
from ddcore.errors import UserError
from ddcore.files import short_hash
from ddcore.generators.self_trained.training import fit_length
from ddcore.latent_cache import LatentCache, dataset_identity, generator_identity, state_dict_hash
from ddcore.progress import ProgressLog

log = logging.getLogger(__name__)
FORMAT = 1  # bump when the fine-tune changes what it computes
WEIGHTS = "trainable.safetensors"

# The official rule trains every parameter whose name contains bias / norm / gamma / y_embed
# (train_dit.py, mark_difffit_trainable). Ported as a substring rule onto diffusers' names it
# would also train the adaLN linears (``norm1.linear.weight``, ``proj_out_1`` is the final one),
# so the set is spelt out per denoiser class, on diffusers' parameter names:
TRAINABLE = {
    "DiTTransformer2DModel": (
        # every bias, as the official 'bias' rule: patch embedding, timestep MLP, adaLN linears
        # (norm1.linear.bias, proj_out_1.bias), attention q/k/v/out, MLP, final projection
        "*.bias",
        # official y_embedder.embedding_table: diffusers keeps one copy per block, all trained
        "transformer_blocks.*.norm1.emb.class_embedder.embedding_table.weight",
        # (DiT's LayerNorms are non-affine: no norm weights exist; DiffFit gammas: not added)
    ),
    "UNet2DModel": (  # the same spirit for the self-trained U-Net: biases, GroupNorm scales, classes
        "*.bias",
        "*.norm1.weight",
        "*.norm2.weight",
        "*.group_norm.weight",
        "conv_norm_out.weight",
        "class_embedding.weight",
    ),
}


def trainable_names(denoiser: torch.nn.Module) -> list[str]:
    """The parameters MinimaxDiffusion fine-tunes (``TRAINABLE``), in the model's order."""
    patterns = TRAINABLE.get(type(denoiser).__name__)
    if patterns is None:
        raise UserError(
            f"method=minimax cannot fine-tune a {type(denoiser).__name__} denoiser (supported: "
            "DiT and U-Net class-conditional generators: generator=dit_tiny, unet_tiny, "
            "ldm_tiny, dit_xl2)"
        )
    return [n for n, _ in denoiser.named_parameters() if any(fnmatchcase(n, p) for p in patterns)]


def mark_trainable(denoiser: torch.nn.Module) -> list[str]:
    """requires_grad on exactly ``trainable_names``; returns them."""
    names = trainable_names(denoiser)
    chosen = set(names)
    for name, param in denoiser.named_parameters():
        param.requires_grad_(name in chosen)
    return names


# -- the minimax terms ------------------------------------------------------------------------
class ClassMemory:
    """Per-class FIFO of at most ``size`` flattened latents (oldest dropped first)."""

    def __init__(self, size: int):
        self.size = int(size)
        self.items: dict[int, torch.Tensor] = {}

    def get(self, label: int) -> torch.Tensor | None:
        return self.items.get(int(label))

    def push(self, label: int, rows: torch.Tensor) -> None:
        old = self.items.get(int(label))
        rows = rows.detach().flatten(1)
        self.items[int(label)] = (rows if old is None else torch.cat([old, rows]))[-self.size :]

    def state_dict(self) -> dict:
        return {k: v.cpu() for k, v in self.items.items()}

    def load_state_dict(self, state: dict, device) -> None:
        self.items = {int(k): v.to(device) for k, v in state.items()}


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos(a_i, b_j) for rows of a (n, D) and b (m, D)."""
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


def minimax_terms(
    x0_pred: torch.Tensor,
    labels: torch.Tensor,
    real: ClassMemory,
    pseudo: ClassMemory,
    lambda_r: float,
    lambda_d: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(representativeness, diversity) losses of a batch (paper eq. 7-8, train_dit.py)."""
    flat = x0_pred.flatten(1).float()
    classes = labels.unique().tolist()
    rep = div = flat.new_zeros(())
    for c in classes:
        if pseudo.get(c) is None:  # the class's first batch: memories still empty
            continue
        mine = flat[labels == c]
        rep = rep + lambda_r * (1 - cosine_matrix(mine, real.get(c).float()).min()) / len(classes)
        div = div + lambda_d * cosine_matrix(mine, pseudo.get(c).float()).max() / len(classes)
    return rep, div


def update_memories(x0, x0_pred, labels, real: ClassMemory, pseudo: ClassMemory) -> None:
    for c in labels.unique().tolist():
        real.push(c, x0[labels == c])
        pseudo.push(c, x0_pred[labels == c].detach())


# -- training ---------------------------------------------------------------------------------
class MinimaxFinetune(pl.LightningModule):
    """eps-MSE + minimax terms on the trainable subset; EMA of that subset (no warm-up, as the
    official ``update_ema``). Checkpoints hold only the trainable weights, their EMA, the
    memories and the random generator, so resuming a DiT-XL/2 fine-tune stays small."""

    def __init__(self, denoiser, scheduler: DDPMScheduler, class_map, null_label: int, settings: dict):
        super().__init__()
        self.denoiser = denoiser
        self.names = mark_trainable(denoiser)
        self.scheduler = scheduler
        self.register_buffer("class_map", torch.as_tensor(class_map, dtype=torch.long), persistent=False)
        self.null_label = int(null_label)
        self.s = settings
        self.real, self.pseudo = ClassMemory(settings["memory_size"]), ClassMemory(settings["memory_size"])
        params = dict(denoiser.named_parameters())
        self.ema = {n: params[n].detach().float().clone() for n in self.names}
        self.strict_loading = False  # checkpoints hold the trainable subset only
        self._rng: torch.Generator | None = None
        self._rng_state = None

    def rng(self, device) -> torch.Generator:
        if self._rng is None or self._rng.device != device:
            self._rng = torch.Generator(device=device).manual_seed(self.s["seed"])
            if self._rng_state is not None:
                self._rng.set_state(self._rng_state)
        return self._rng

    def training_step(self, batch, batch_idx):
        x0, labels = batch  # clean latents, dataset labels
        g, n, dev = self.rng(x0.device), x0.shape[0], x0.device
        if self.s["flip"]:  # the official random horizontal flip, applied to the latent
            x0 = torch.where(
                (torch.rand(n, generator=g, device=dev) < 0.5)[:, None, None, None], x0.flip(-1), x0
            )
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (n,), generator=g, device=dev)
        noise = torch.randn(x0.shape, generator=g, device=dev)
        drop = torch.rand(n, generator=g, device=dev) < self.s["label_dropout"]  # stays on (DiT's)
        cond = torch.where(drop, torch.full_like(labels, self.null_label), self.class_map[labels])
        x_t = self.scheduler.add_noise(x0, noise, t)
        out = self.denoiser(x_t.to(self.denoiser.dtype), t, class_labels=cond).sample.float()
        eps = out[:, : x0.shape[1]]  # a learned variance's channels get no loss (docs/minimax.md)
        alpha_bar = self.scheduler.alphas_cumprod.to(dev)[t].view(-1, 1, 1, 1)
        x0_pred = (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
        mse = F.mse_loss(eps, noise)
        rep, div = minimax_terms(
            x0_pred, labels, self.real, self.pseudo, self.s["lambda_r"], self.s["lambda_d"]
        )
        update_memories(x0, x0_pred, labels, self.real, self.pseudo)
        self.log_dict({"minimax/mse": mse, "minimax/rep": rep, "minimax/div": div}, prog_bar=True)
        return mse + rep + div

    @torch.no_grad()
    def on_train_batch_end(self, outputs, batch, batch_idx):
        params = dict(self.denoiser.named_parameters())
        for name, ema in self.ema.items():
            ema.lerp_(params[name].detach().float().to(ema.device), 1.0 - self.s["ema_decay"])

    def on_fit_start(self):
        self.ema = {k: v.to(self.device) for k, v in self.ema.items()}

    def configure_optimizers(self):
        params = dict(self.denoiser.named_parameters())
        return torch.optim.AdamW([params[n] for n in self.names], lr=self.s["lr"], weight_decay=0.0)

    def on_save_checkpoint(self, checkpoint):
        prefix = "denoiser."
        checkpoint["state_dict"] = {prefix + n: checkpoint["state_dict"][prefix + n] for n in self.names}
        checkpoint["minimax"] = {
            "ema": {k: v.cpu() for k, v in self.ema.items()},
            "real": self.real.state_dict(),
            "pseudo": self.pseudo.state_dict(),
            "rng": self.rng(self.device).get_state(),
        }

    def on_load_checkpoint(self, checkpoint):
        state = checkpoint["minimax"]
        self.ema = {k: v.to(self.device) for k, v in state["ema"].items()}
        self.real.load_state_dict(state["real"], self.device)
        self.pseudo.load_state_dict(state["pseudo"], self.device)
        self._rng, self._rng_state = None, state["rng"]

    def tuned_weights(self) -> dict[str, torch.Tensor]:
        """The EMA of the trainable subset, in the denoiser's dtype (what sampling uses)."""
        dtype = self.denoiser.dtype
        return {k: v.detach().to("cpu", dtype).contiguous() for k, v in self.ema.items()}


def training_copy(denoiser: torch.nn.Module) -> torch.nn.Module:
    """A copy to fine-tune; labels are dropped by the module with its own generator, so the
    model's internal label dropout (global RNG) is turned off, as for self-trained models."""
    model = copy.deepcopy(denoiser).train()
    for module in model.modules():
        if hasattr(module, "dropout_prob"):
            module.dropout_prob = 0.0
    return model


def train_chunk(
    generator, latents, labels, settings: dict, out_dir: Path, trainer_kwargs: dict, what: str
) -> dict:
    """Fine-tune a copy of ``generator.denoiser`` on (latents, labels) into ``out_dir``; resumes
    from ``out_dir/checkpoints/last.ckpt``. Returns the run's numbers (``trained_steps``: this
    call's optimizer steps)."""
    train = {**settings["finetune"], "max_minutes": settings["finetune"].get("max_minutes")}
    length = fit_length(train, len(latents))
    pl.seed_everything(train["seed"], workers=True, verbose=False)
    module = MinimaxFinetune(
        training_copy(generator.denoiser),
        DDPMScheduler.from_config(generator.scheduler_config),
        generator.class_map.cpu(),
        generator.null_label,
        {
            **train,
            "lambda_r": settings["lambda_r"],
            "lambda_d": settings["lambda_d"],
            "memory_size": settings["memory_size"],
        },
    )
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(latents.cpu().float(), labels.cpu()),
        batch_size=train["batch_size"],
        shuffle=True,
        drop_last=len(latents) > train["batch_size"],  # as the official loader (drop_last)
        generator=torch.Generator().manual_seed(train["seed"]),
    )
    last = out_dir / "checkpoints" / "last.ckpt"
    resume = last if last.is_file() else None
    trainer = pl.Trainer(
        **length["kwargs"],
        logger=False,
        callbacks=[
            ProgressLog(what),
            pl.callbacks.ModelCheckpoint(
                dirpath=out_dir / "checkpoints",
                save_last=True,
                save_top_k=0,
                every_n_train_steps=train["checkpoint_every"],
            ),
        ],
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_kwargs,
    )
    n_trainable = sum(p.numel() for p in module.denoiser.parameters() if p.requires_grad)
    log.info(
        f"{what}: {length['planned']} steps ({length['per_epoch']} per epoch) on {len(latents)} "
        f"latents, {n_trainable / 1e6:.3f}M trainable parameters"
        + (f", resuming from {resume}" if resume else "")
    )
    first = torch.load(resume, map_location="cpu", weights_only=True)["global_step"] if resume else 0
    start = time.perf_counter()
    trainer.fit(module, loader, ckpt_path=resume)
    save_file(module.tuned_weights(), out_dir / WEIGHTS)
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "steps": trainer.global_step,
        "planned_steps": length["planned"],
        "trained_steps": trainer.global_step - first,
        "trainable_parameters": n_trainable,
        "trainable_names": module.names,
        "final_mse": float(trainer.callback_metrics.get("minimax/mse", float("nan"))),
    }


# -- the cache --------------------------------------------------------------------------------
def chunk_key(generator, data: ImageClassificationData, labels: list[int], settings: dict) -> str:
    """What the fine-tuned weights depend on: base weights, encoder, chunk images, settings."""
    return short_hash(
        {
            "format": FORMAT,
            "dataset": dataset_identity(data),
            "encoder": generator_identity(generator),
            "denoiser": state_dict_hash(generator.denoiser),
            "class_map": generator.class_map.tolist(),
            "labels": list(labels),
            "class_digests": [data.class_digest(label) for label in labels],
            "settings": settings,
        },
        12,
    )


@contextlib.contextmanager
def exclusive(path: Path):
    """One process fine-tunes a chunk; the others (ranks of a sharded run) wait, then read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_or_finetune(
    generator,
    data: ImageClassificationData,
    labels: list[int],
    settings: dict,
    cache_dir: str | Path,
    latents: LatentCache,
    trainer_kwargs: dict | None = None,
) -> dict[str, torch.Tensor]:
    """The fine-tuned trainable weights for the chunk ``labels``: cached, or trained first.
    ``generator`` must hold its base weights (they are part of the key)."""
    what = f"minimax fine-tune of classes {labels[0]}-{labels[-1]}"
    key = chunk_key(generator, data, labels, settings)
    folder = Path(cache_dir) / f"{data.name}-{generator.name}-c{labels[0]}-{labels[-1]}-{key}"
    with exclusive(folder.with_name(folder.name + ".lock")):
        if (folder / "meta.json").is_file():
            log.info(f"{what}: reusing {folder}")
        else:
            x = torch.cat([latents.class_latents(generator, data, label).float().cpu() for label in labels])
            y = torch.cat([torch.full((len(data.class_indices(label)),), label) for label in labels])
            tmp = folder.with_name(folder.name + ".tmp")  # kept on a crash: the next run resumes it
            tmp.mkdir(parents=True, exist_ok=True)
            meta = train_chunk(generator, x, y, settings, tmp, dict(trainer_kwargs or {}), what)
            meta.update(labels=list(labels), class_ids=[data.class_ids[i] for i in labels], settings=settings)
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
            shutil.rmtree(tmp / "checkpoints", ignore_errors=True)
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
    return load_file(folder / WEIGHTS)

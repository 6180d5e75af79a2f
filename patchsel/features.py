"""Stage II features of the chosen patches: DIFT (default) or CLIP image embeddings.

DIFT (Tang et al., "Emergent Correspondence from Image Diffusion") reads an intermediate
activation of the denoiser for a lightly noised image: the patch is encoded, noised to a fixed
small timestep ``t`` with a fixed per-patch noise, and passed once through the denoiser with the
class condition; a forward hook keeps the output of ``layer`` (DIFT's default for SD: the
second up-block, ``up_blocks.1``, at t = 261; for a DiT the middle transformer block), which is
averaged over space (or tokens) into one vector per patch.

CLIP features (the paper's ablation) need a local CLIP vision model folder; nothing is fetched.
"""

from __future__ import annotations

import torch

from ddcore.errors import UserError
from ddcore.generators.base import DiffusionGenerator
from ddcore.latent_cache import ENCODE_BATCH
from ddcore.seeding import rng_for
from patchsel.relevance import alphas_cumprod

FEATURES = ("dift", "clip")


def default_layer(denoiser: torch.nn.Module) -> str:
    """``up_blocks.1`` for a U-Net (DIFT's choice), the middle block for a DiT."""
    if hasattr(denoiser, "up_blocks"):
        return f"up_blocks.{min(1, len(denoiser.up_blocks) - 1)}"
    if hasattr(denoiser, "transformer_blocks"):
        return f"transformer_blocks.{len(denoiser.transformer_blocks) // 2}"
    raise UserError(
        f"cannot choose a DIFT layer for {type(denoiser).__name__}; name one with "
        "method.dift_layer=<module path> (e.g. up_blocks.1)"
    )


def find_layer(denoiser: torch.nn.Module, layer: str) -> torch.nn.Module:
    try:
        return denoiser.get_submodule(layer)
    except AttributeError:
        names = [n for n, _ in denoiser.named_children()]
        raise UserError(
            f"method.dift_layer={layer!r} is not a module of the denoiser (its "
            f"top-level modules: {', '.join(names)}; e.g. up_blocks.1 or "
            "transformer_blocks.2)"
        ) from None


def pool(activation) -> torch.Tensor:
    """(B, C, H, W) -> mean over space; (B, T, D) -> mean over tokens."""
    if isinstance(activation, (tuple, list)):
        activation = activation[0]
    activation = activation.float()
    if activation.ndim == 4:
        return activation.mean(dim=(2, 3))
    if activation.ndim == 3:
        return activation.mean(dim=1)
    return activation.flatten(1)


class DiftFeatures:
    """``(patches01, cond, keys) -> (n, D)``: pooled denoiser activations of noised patches.

    Args:
        generator: the scoring generator (its denoiser and encoder are reused).
        layer: module path inside the denoiser, or ``auto`` (see ``default_layer``).
        t: the timestep patches are noised to.
        resolution: pixels the patches are encoded at (the scoring image size).
        seed: seeds the per-patch noise (``keys`` name the patches).
    """

    def __init__(
        self,
        generator: DiffusionGenerator,
        layer: str = "auto",
        t: int = 261,
        resolution: int | None = None,
        seed: int = 0,
        batch_size: int = 64,
    ):
        self.generator = generator
        denoiser = generator.denoiser
        self.layer = default_layer(denoiser) if layer == "auto" else layer
        self.module = find_layer(denoiser, self.layer)
        steps = int(generator.scheduler_config.get("num_train_timesteps", 1000))
        if not 0 <= t < steps:
            raise UserError(f"method.dift_t={t} is outside the schedule [0, {steps - 1}]")
        self.t, self.resolution, self.seed = int(t), resolution, seed
        self.batch_size = batch_size
        self.abar_t = float(alphas_cumprod(generator)[self.t])

    @torch.no_grad()
    def __call__(self, patches01: torch.Tensor, cond: torch.Tensor, keys: list) -> torch.Tensor:
        gen = self.generator
        out = []
        for start in range(0, len(patches01), self.batch_size):
            chunk = patches01[start : start + self.batch_size]
            z = gen.encode(chunk, batch_size=ENCODE_BATCH, resolution=self.resolution)
            eps = torch.stack(
                [
                    torch.randn(z.shape[1:], generator=rng_for(self.seed, "dift", k))
                    for k in keys[start : start + len(chunk)]
                ]
            ).to(z.device)
            z_t = self.abar_t**0.5 * z + (1 - self.abar_t) ** 0.5 * eps
            out.append(self.activation(z_t, cond).cpu())
        return torch.cat(out)

    def activation(self, z_t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The pooled output of ``self.module`` in one conditional forward of ``z_t``."""
        captured = []
        handle = self.module.register_forward_hook(lambda m, i, o: captured.append(pool(o)))
        try:
            self.generator.denoise(
                z_t, torch.tensor(self.t, device=z_t.device), cond.expand(len(z_t), *cond.shape[1:])
            )
        finally:
            handle.remove()
        return captured[0]


class ClipFeatures:
    """``(patches01, cond, keys) -> (n, D)``: image embeddings of a local CLIP vision model."""

    MEAN = (0.48145466, 0.4578275, 0.40821073)
    STD = (0.26862954, 0.26130258, 0.27577711)

    def __init__(self, path: str | None, device: torch.device | str = "cpu", batch_size: int = 64):
        if not path:
            raise UserError(
                "method.features=clip needs a local CLIP vision model: "
                "method.clip_model=<folder saved by transformers> (nothing is downloaded)"
            )
        from transformers import CLIPVisionModelWithProjection

        try:
            self.model = CLIPVisionModelWithProjection.from_pretrained(path, local_files_only=True)
        except OSError as exc:
            raise UserError(
                f"cannot load a CLIP vision model from method.clip_model={path!r} "
                f"({str(exc).splitlines()[0]}); give a folder saved with "
                "save_pretrained"
            ) from None
        self.model = self.model.eval().requires_grad_(False).to(device)
        self.size = int(self.model.config.image_size)
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, patches01: torch.Tensor, cond: torch.Tensor, keys: list) -> torch.Tensor:
        from ddcore.data.base import resize_images

        device = next(self.model.parameters()).device
        mean = torch.tensor(self.MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.STD, device=device).view(1, 3, 1, 1)
        out = []
        for chunk in patches01.split(self.batch_size):
            x = resize_images(chunk.to(device).float(), self.size)
            x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
            out.append(self.model(pixel_values=(x - mean) / std).image_embeds.float().cpu())
        return torch.cat(out)

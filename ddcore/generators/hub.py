"""The Hugging Face hub models the framework names, with the folder layout each has there.

One table: the loaders' defaults and ``conf/generator/*.yaml`` name only ids listed here, and
``tests/test_hub_layouts.py`` checks both, then builds a tiny model in each entry's layout (the
same subfolders, ``_class_name``s and weight files) and loads it through the loader that uses it.
A downloaded copy is found at ``<paths.model_dir>/<org>/<name>`` (``pretrained.resolve_model``).

Not listed: the class-conditional LDM (CompVis publishes cin256 only as an original-format
checkpoint, so ``generator=ldm`` reads a converted local folder, ``ldm.py``), and timm or
torchvision weights (students and teachers load them from local files, ``eval.*.pretrained_dir``;
nothing is fetched by name).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class HubModel:
    """One hub repository as its files are laid out.

    Args:
        role: the loader argument that takes it: ``dit`` (``load_dit(path=)``), ``vae``
            (``load_dit(vae=)``) or ``sd`` (``load_stable_diffusion(path=)``).
        pipeline: ``_class_name`` of its ``model_index.json``; None for a single model at the root.
        components: subfolder (``""`` = the root) -> ``_class_name`` in its config, for each part
            a loader reads (SD's ``safety_checker/`` and ``feature_extractor/`` are not read).
        weights: subfolder -> the weights file the hub ships there (what must load).
    """

    role: str
    pipeline: str | None
    components: dict[str, str]
    weights: dict[str, str] = field(default_factory=dict)


# The converted DiT checkpoints (diffusers' scripts/convert_dit_to_diffusers.py): the
# transformer is saved as the legacy Transformer2DModel (norm_type ada_norm_zero, which diffusers
# maps to DiTTransformer2DModel) in a .bin file, the VAE is sd-vae-ft-ema, the scheduler DDIM.
DIT_LAYOUT = dict(
    pipeline="DiTPipeline",
    components={"transformer": "Transformer2DModel", "vae": "AutoencoderKL", "scheduler": "DDIMScheduler"},
    weights={"transformer": "diffusion_pytorch_model.bin", "vae": "diffusion_pytorch_model.bin"},
)
DIT_XL2_256 = "facebook/DiT-XL-2-256"
DIT_XL2_512 = "facebook/DiT-XL-2-512"  # generator=dit_xl2 generator.path=... generator.resolution=512
SD_VAE_FT_MSE = "stabilityai/sd-vae-ft-mse"  # the VAE MGD^3's official code decodes DiT latents with
# runwayml/stable-diffusion-v1-5 was deleted from the hub in 2024; this is its maintained mirror.
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"

HUB_MODELS: dict[str, HubModel] = {
    DIT_XL2_256: HubModel("dit", **DIT_LAYOUT),
    DIT_XL2_512: HubModel("dit", **DIT_LAYOUT),
    SD_VAE_FT_MSE: HubModel(
        "vae",
        pipeline=None,
        components={"": "AutoencoderKL"},
        weights={"": "diffusion_pytorch_model.safetensors"},
    ),
    SD15: HubModel(
        "sd",
        pipeline="StableDiffusionPipeline",
        components={
            "unet": "UNet2DConditionModel",
            "vae": "AutoencoderKL",
            "text_encoder": "CLIPTextModel",
            "tokenizer": "CLIPTokenizer",
            "scheduler": "PNDMScheduler",
        },
        weights={
            "unet": "diffusion_pytorch_model.safetensors",
            "vae": "diffusion_pytorch_model.safetensors",
            "text_encoder": "model.safetensors",
        },
    ),
}

"""DiT generators: DiT-XL/2 from the hub or a folder, and the tiny DiT the framework trains.

The null class used for classifier-free guidance is ``num_embeds_ada_norm`` of the loaded
model's config (diffusers' DiTPipeline hard-codes 1000, which is wrong for any other model).
The hub's DiT folders save the transformer as the legacy ``Transformer2DModel`` (norm_type
``ada_norm_zero``) in a ``.bin`` file; diffusers reads that config as a DiTTransformer2DModel
(``hub.py`` has the layout, tested).
"""

from __future__ import annotations

from diffusers import AutoencoderKL, DDPMScheduler, DiTTransformer2DModel

from ddcore.data.base import ImageClassificationData
from ddcore.generators.base import ClassConditionalGenerator, VAECodec, map_classes
from ddcore.generators.pretrained import load_component, torch_dtype


def build_dit(
    in_channels: int, sample_size: int, num_classes: int, learned_variance: bool = False, **arch
) -> DiTTransformer2DModel:
    """A class-conditional DiT from config (``arch`` = DiTTransformer2DModel kwargs)."""
    return DiTTransformer2DModel(
        in_channels=in_channels,
        out_channels=in_channels * (2 if learned_variance else 1),
        sample_size=sample_size,
        num_embeds_ada_norm=num_classes,
        **arch,
    )


def dit_null_label(transformer: DiTTransformer2DModel) -> int:
    """Index of the null class: the extra row diffusers' LabelEmbedding appends (= #classes)."""
    return int(transformer.config.num_embeds_ada_norm)


def load_dit(
    data: ImageClassificationData,
    *,
    path: str,
    vae: str | None,
    resolution: int,
    cfg_scale: float,
    cfg_channels: int | None,
    class_space: str,
    dtype: str,
    name: str,
    timestep_spacing: dict | None,
    model_dir: str | None,
) -> ClassConditionalGenerator:
    """DiT from a hub id or a local folder with ``transformer/``, ``vae/``, ``scheduler/``.
    Settings and their defaults: ``conf/generator/dit_xl2.yaml``.

    ``vae`` names a separate VAE (MGD^3's official code uses sd-vae-ft-mse); None uses the
    checkpoint's own ``vae/`` subfolder. ``class_space`` says how dataset labels map to model
    classes: ``imagenet1k`` (by wnid) or ``dataset`` (identity, counts must match).
    ``timestep_spacing``: the sampling grids per sampler (the YAML's are the official DiT ones);
    None keeps the checkpoint's scheduler config. ``model_dir``: where downloaded hub ids are looked for first
    (``<model_dir>/<org>/<name>``; default ``DD_MODEL_DIR``).
    """
    weights = torch_dtype(dtype)
    transformer = load_component(
        DiTTransformer2DModel, path, "transformer", torch_dtype=weights, model_dir=model_dir
    )
    vae_model = (
        load_component(
            AutoencoderKL, vae, None, setting="generator.vae", torch_dtype=weights, model_dir=model_dir
        )
        if vae
        else load_component(AutoencoderKL, path, "vae", torch_dtype=weights, model_dir=model_dir)
    )
    scheduler = load_component(DDPMScheduler, path, "scheduler", model_dir=model_dir)
    model_classes = dit_null_label(transformer)
    return ClassConditionalGenerator(
        transformer,
        VAECodec(vae_model),
        dict(scheduler.config),
        model_classes=model_classes,
        null_label=dit_null_label(transformer),
        class_map=map_classes(data, model_classes, class_space, name),
        resolution=resolution,
        image_channels=data.channels,
        cfg_scale=cfg_scale,
        cfg_channels=cfg_channels,
        name=name,
        timestep_spacing=timestep_spacing,
    )

"""Pretrained-generator loaders (Stable Diffusion, class-conditional LDM) on tiny saved models.

Tiny components are built from config, saved in the hub folder layout and loaded back offline
through the loader functions, as a real checkpoint folder would be.
"""

import json
import os
import string

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    PNDMScheduler,
    UNet2DConditionModel,
    UNet2DModel,
    VQModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

import ddcore  # noqa: F401  (torchvision import fix before diffusers/transformers)
from ddcore.data.base import ImageClassificationData, TensorSource
from ddcore.data.classes import imagenet1k_wnids, subset_wnids, wnid_names
from ddcore.errors import UserError
from ddcore.generators.ldm import VQCodec, load_class_ldm
from ddcore.generators.stable_diffusion import TextConditionalGenerator, load_stable_diffusion
from tests.configs import generator_settings

RES = 32  # pixels; the tiny autoencoders downsample by 2 -> 16x16 latents
TOKENS = 16


# the first three ImageNette classes and their ImageNet-1K indices (tench, English springer,
# cassette player), written out so a wrong order in the wnid table fails the class-map tests
IMAGENET_INDEX = {"n01440764": 0, "n02102040": 217, "n02979186": 482}


def make_data(num_classes=3, prompts=True, channels=3):
    wnids = subset_wnids("imagenette")[:num_classes]
    names, sd_names = wnid_names(wnids)
    images = torch.randint(0, 256, (2 * num_classes, channels, RES, RES), dtype=torch.uint8)
    source = TensorSource(images, torch.arange(num_classes).repeat(2))
    if not prompts:
        wnids, names, sd_names = [], [], []
    return ImageClassificationData(
        name="tinynette",
        class_ids=wnids,
        class_names=names,
        resolution=RES,
        channels=channels,
        train=source,
        test=source,
        prompts=sd_names,
    )


def tiny_vae():
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 32),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )


def write_tokenizer(folder):
    """A CLIP BPE tokenizer over single characters (no network for a real vocab)."""
    chars = string.ascii_lowercase + string.digits + ".,-'"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        vocab.update({c + suffix: len(vocab) + i for i, c in enumerate(chars)})
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": TOKENS}))
    CLIPTokenizer.from_pretrained(str(folder)).save_pretrained(str(folder))


def save_tiny_sd(root):
    """A tiny SD v1.x folder (unet/ vae/ text_encoder/ tokenizer/ scheduler/) under ``root``."""
    torch.manual_seed(0)
    UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        cross_attention_dim=32,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ).save_pretrained(root / "unet")
    tiny_vae().save_pretrained(root / "vae")
    CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=100,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    ).save_pretrained(root / "text_encoder")
    write_tokenizer(root / "tokenizer")
    # SD v1.5 ships a PNDM scheduler config; the loader reads it as a DDPM schedule.
    PNDMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True
    ).save_pretrained(root / "scheduler")
    return root


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return save_tiny_sd(tmp_path_factory.mktemp("sd"))


def ldm_folder(root, num_class_embeds, vq=False):
    torch.manual_seed(0)
    channels = 3 if vq else 4
    UNet2DModel(
        sample_size=16,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=1,
        block_out_channels=(32, 32),
        down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2,
        num_class_embeds=num_class_embeds,
    ).save_pretrained(root / "unet")
    if vq:
        VQModel(
            in_channels=3,
            out_channels=3,
            latent_channels=3,
            block_out_channels=(32, 32),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            num_vq_embeddings=16,
        ).save_pretrained(root / "vqvae")
        config = root / "vqvae" / "config.json"  # CompVis' converted VQ configs set no scale
        config.write_text(
            json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k != "scaling_factor"})
        )
    else:
        tiny_vae().save_pretrained(root / "vae")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(root / "scheduler")
    return root


def test_stable_diffusion_loads_offline_and_conditions_on_prompts(sd_folder):
    data = make_data()
    gen = load_stable_diffusion(
        data,
        **generator_settings(
            "sd15",
            path=str(sd_folder),
            resolution=RES,
            prompt_template="An image of {}",
            null_prompt="An image of .",
        ),
    )
    assert isinstance(gen, TextConditionalGenerator)
    assert gen.num_classes == 3 and gen.prompts[0] == f"An image of {data.prompts[0]}"
    assert gen.latent_shape == (4, 16, 16) and gen.learned_variance is False
    assert gen.scheduler_config["num_train_timesteps"] == 1000

    latents = gen.encode(data.train.load([0, 1]))
    assert latents.shape == (2, 4, 16, 16)
    images = gen.decode(latents)
    assert images.shape == (2, 3, RES, RES) and 0 <= images.min() and images.max() <= 1

    cond, null = gen.condition(torch.tensor([0, 2])), gen.null_condition(2)
    assert cond.shape == null.shape == (2, TOKENS, 32)
    assert not torch.allclose(cond[0], cond[1]) and not torch.allclose(cond[0], null[0])
    cached = gen.class_embeddings
    assert gen.condition(torch.tensor([1])).shape == (1, TOKENS, 32)
    assert gen.class_embeddings is cached  # embedded once, not per call

    x = torch.randn(4, *gen.latent_shape)
    out = gen.denoise(x, torch.tensor(500), torch.cat([cond, null]))
    assert out.shape == x.shape and out.dtype == torch.float32
    eps, var = gen.split_output(out)
    assert eps.shape == x.shape and var is None


def test_stable_diffusion_grayscale_dataset_gets_gray_images(sd_folder):
    data = make_data(channels=1)
    gen = load_stable_diffusion(data, **generator_settings("sd15", path=str(sd_folder), resolution=RES))
    assert gen.decode(gen.encode(data.train.load([0]))).shape == (1, 1, RES, RES)


def test_class_ldm_maps_imagenet_subset_and_uses_last_embedding_as_null(tmp_path):
    data = make_data()
    gen = load_class_ldm(
        data, **generator_settings("ldm", path=str(ldm_folder(tmp_path, 1001)), resolution=RES)
    )
    index = {w: i for i, w in enumerate(imagenet1k_wnids())}
    assert data.class_ids == list(IMAGENET_INDEX)
    assert gen.class_map.tolist() == list(IMAGENET_INDEX.values())  # known, not from the table
    assert gen.model_classes == 1000 and gen.null_label == 1000
    assert gen.num_classes == 3 and gen.learned_variance is False

    latents = gen.encode(data.train.load([0, 1]))
    assert latents.shape == (2, *gen.latent_shape) == (2, 4, 16, 16)
    assert gen.decode(latents).shape == (2, 3, RES, RES)
    cond = torch.cat([gen.condition(torch.tensor([0, 2])), gen.null_condition(2)])
    assert cond.tolist() == [index[data.class_ids[0]], index[data.class_ids[2]], 1000, 1000]
    out = gen.denoise(torch.randn(4, *gen.latent_shape), torch.tensor(10), cond)
    assert out.shape == (4, 4, 16, 16)


def test_class_ldm_with_vqvae_and_dataset_classes(tmp_path):
    data = make_data()
    gen = load_class_ldm(
        data,
        **generator_settings(
            "ldm", path=str(ldm_folder(tmp_path, 4, vq=True)), class_space="dataset", resolution=RES
        ),
    )
    assert isinstance(gen.codec, VQCodec) and gen.codec.scaling_factor == 1.0
    assert gen.class_map.tolist() == [0, 1, 2] and gen.null_label == 3
    latents = gen.encode(data.train.load([0, 1, 2]))
    assert latents.shape == (3, *gen.latent_shape) == (3, 3, 16, 16)
    assert gen.decode(latents).shape == (3, 3, RES, RES)


def test_missing_hub_model_offline_says_how_to_download():
    with pytest.raises(UserError) as err:
        load_stable_diffusion(make_data(), **generator_settings("sd15", path="no-such-org/no-such-model"))
    msg = str(err.value)
    assert "'no-such-org/no-such-model'" in msg and "generator.path" in msg
    assert "not a local folder" in msg and "\n" not in msg


def test_folder_without_unet_names_the_subfolder(tmp_path):
    (tmp_path / "vae").mkdir()
    with pytest.raises(UserError, match="has no unet/ subfolder") as err:
        load_class_ldm(make_data(), **generator_settings("ldm", path=str(tmp_path)))
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)


def test_folder_without_tokenizer_files_is_an_error(sd_folder, tmp_path):
    import shutil

    folder = tmp_path / "sd"
    shutil.copytree(sd_folder, folder, ignore=shutil.ignore_patterns("tokenizer*"))
    (folder / "tokenizer").mkdir()
    with pytest.raises(UserError, match="cannot load tokenizer"):
        load_stable_diffusion(make_data(), **generator_settings("sd15", path=str(folder)))


def test_stable_diffusion_without_class_names_is_an_error(sd_folder):
    with pytest.raises(UserError, match="needs class names for prompts; dataset tinynette"):
        load_stable_diffusion(make_data(prompts=False), **generator_settings("sd15", path=str(sd_folder)))


def test_dataset_class_space_checks_class_count(tmp_path):
    folder = ldm_folder(tmp_path, 11)  # 10 classes + null
    with pytest.raises(UserError, match="has 10 classes but dataset tinynette has 3"):
        load_class_ldm(make_data(), **generator_settings("ldm", path=str(folder), class_space="dataset"))


def test_missing_local_folder_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(UserError, match="no such folder, and not a hub id") as err:
        load_class_ldm(make_data(), **generator_settings("ldm", path=str(tmp_path / "ldm-cin256")))
    assert str(tmp_path / "ldm-cin256") in str(err.value)


# -- CompVis cin256: class labels -> ClassEmbedder -> the U-Net's cross-attention ------------
def cin256_folder(root, embedder=True, n_classes=1001, embed_dim=16):
    """The cin256 layout a conversion gives (cin256-v2.yaml at tiny size): unet/ a
    UNet2DConditionModel (3 latent channels, cross-attention), class_embedder/ the ClassEmbedder's
    ``embedding.weight`` (``cond_stage_model.embedding.weight`` in CompVis' checkpoint), vqvae/."""
    from safetensors.torch import save_file

    ldm_folder(root, 4, vq=True)  # vqvae/ and scheduler/; unet/ is replaced below
    torch.manual_seed(0)
    UNet2DConditionModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(16, 16),
        norm_num_groups=8,
        cross_attention_dim=embed_dim,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ).save_pretrained(root / "unet")
    if embedder:
        (root / "class_embedder").mkdir()
        config = {"_class_name": "LDMClassEmbedder", "n_classes": n_classes, "embed_dim": embed_dim}
        (root / "class_embedder" / "config.json").write_text(json.dumps(config))
        weight = torch.randn(n_classes, embed_dim)
        save_file(
            {"embedding.weight": weight}, root / "class_embedder" / "diffusion_pytorch_model.safetensors"
        )
    return root


def test_cin256_layout_conditions_the_unet_through_cross_attention(tmp_path):
    from safetensors.torch import load_file

    data = make_data()
    folder = cin256_folder(tmp_path)
    gen = load_class_ldm(data, **generator_settings("ldm", path=str(folder), resolution=RES))
    assert gen.model_classes == 1000 and gen.null_label == 1000  # CompVis samples CFG with 1000
    assert gen.class_map.tolist() == list(IMAGENET_INDEX.values())
    assert isinstance(gen.codec, VQCodec) and gen.latent_shape == (3, 16, 16)
    latents = gen.encode(data.train.load([0, 1]))
    assert gen.decode(latents).shape == (2, 3, RES, RES)

    cond = torch.cat([gen.condition(torch.tensor([0, 2])), gen.null_condition(1)])
    x, t = torch.randn(1, *gen.latent_shape).expand(3, -1, -1, -1), torch.tensor(500)
    out = gen.denoise(x, t, cond)
    table = load_file(folder / "class_embedder" / "diffusion_pytorch_model.safetensors")["embedding.weight"]
    context = table[cond][:, None]  # ClassEmbedder: (n, 1, embed_dim)
    expected = gen.denoiser(x, t.repeat(3), encoder_hidden_states=context).sample
    assert torch.allclose(out, expected, atol=1e-5)
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[0], out[2])  # labels matter


def test_cross_attention_unet_without_class_embedder_is_refused(tmp_path):
    folder = cin256_folder(tmp_path, embedder=False)
    with pytest.raises(UserError) as err:
        load_class_ldm(make_data(), **generator_settings("ldm", path=str(folder), resolution=RES))
    msg = str(err.value)
    assert "UNet2DConditionModel" in msg and "no class_embedder/" in msg and "supported:" in msg
    assert "\n" not in msg


def test_unconditional_ldm_is_refused_naming_the_supported_layouts(tmp_path):
    folder = ldm_folder(tmp_path, None, vq=True)  # as CompVis/ldm-celebahq-256: no classes
    with pytest.raises(UserError, match="not class-conditional.*supported: unet/ UNet2DModel") as err:
        load_class_ldm(make_data(), **generator_settings("ldm", path=str(folder), resolution=RES))
    assert "\n" not in str(err.value)


def test_class_embedder_width_must_match_cross_attention(tmp_path):
    import shutil

    folder = cin256_folder(tmp_path / "a", embed_dim=16)
    shutil.rmtree(folder / "class_embedder")
    shutil.copytree(cin256_folder(tmp_path / "b", embed_dim=32) / "class_embedder", folder / "class_embedder")
    with pytest.raises(UserError, match="32-d contexts but the U-Net's cross_attention_dim is 16"):
        load_class_ldm(make_data(), **generator_settings("ldm", path=str(folder), resolution=RES))

"""Baselines as methods: unguided, d4m, kmeans_real, herding and random run end to end under
the same sampler, seeds and outputs; real-image selections pick what they promise; bad input
is a one-line error."""

import json
from pathlib import Path

import pytest
import torch

from baselines.real import herding
from ddapp.jobs import build
from ddapp.schemas import D4MSchema, from_schema
from ddapp.stages import prepare_distillation
from ddcore.errors import UserError
from ddcore.generators.stable_diffusion import load_stable_diffusion
from ddcore.kmeans import kmeans
from ddcore.seeding import derive_seed
from tests.configs import generator_settings
from tests.distill import distill_set
from tests.test_generators_pretrained import RES, make_data, sd_folder  # noqa: F401 (fixture)

BASELINES = {
    "unguided": ["method.steps=4"],
    "d4m": ["method.steps=4"],
    "kmeans_real": [],
    "herding": [],
    "random": [],
}


@pytest.mark.parametrize("method", sorted(BASELINES))
def test_baseline_distills_a_folder_end_to_end(make_cfg, method):
    cfg = make_cfg("task=distill", f"method={method}", *BASELINES[method])
    metrics = build(cfg.task)(cfg)
    out = Path(cfg.paths.output_dir) / "distilled"
    assert len(list(out.glob("*/*.png"))) == 10 * cfg.ipc
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == method and metrics["distill/images"] == 10 * cfg.ipc


def test_d4m_starts_from_its_prototypes_with_the_unguided_sampler_and_seeds(make_cfg):
    cfg = make_cfg("method=d4m", "method.steps=6")
    data, method, generator = prepare_distillation(cfg)
    out = distill_set(method, data, cfg.ipc, cfg.seed, generator)
    prototypes = out.stats["modes"]  # k-means prototypes, saved with the run
    assert sorted(prototypes) == list(range(10)) and prototypes[0].shape == (2, 1, 16, 16)
    # noised to 70% and denoised, the images stay closer to their prototypes than unguided ones
    unguided = build(make_cfg("method=unguided", "method.steps=6").method)
    plain = distill_set(unguided, data, cfg.ipc, cfg.seed, generator)
    protos = generator.decode(torch.cat([prototypes[c] for c in range(10)])).cpu()
    assert (out.images - protos).norm() < (plain.images - protos).norm()


def test_d4m_with_stable_diffusion_uses_class_prompts_and_latents(sd_folder, tmp_path):  # noqa: F811
    data = make_data()  # 3 imagenette classes, 2 images each
    generator = load_stable_diffusion(data, **generator_settings("sd15", path=str(sd_folder), resolution=RES))
    method = from_schema(D4MSchema, steps=3, latent_cache_dir=str(tmp_path / "latents"))
    out = distill_set(method, data, 2, 0, generator)
    assert out.images.shape == (6, 3, RES, RES) and out.stats["modes"][0].shape == (2, 4, 16, 16)
    assert len(list((tmp_path / "latents").rglob("*.pt"))) == 3


def test_stable_diffusion_without_class_names_is_a_one_line_error(sd_folder):  # noqa: F811
    with pytest.raises(UserError, match="needs class names for prompts") as err:
        load_stable_diffusion(make_data(prompts=False), **generator_settings("sd15", path=str(sd_folder)))
    assert "\n" not in str(err.value)


def test_kmeans_real_returns_the_distinct_real_image_closest_to_each_centroid(make_cfg):
    cfg = make_cfg("method=kmeans_real", "ipc=3")
    data, method, _ = prepare_distillation(cfg)
    out = distill_set(method, data, 3, cfg.seed)
    label = 7
    rows = [i for i, y in enumerate(out.labels.tolist()) if y == label]
    chosen = [out.info["source_index"][i] for i in rows]
    assert len(set(chosen)) == 3 and torch.equal(out.images[rows], data.train.load_uint8(chosen))
    feats = data.class_images(label).flatten(1)
    centroids, _ = kmeans(feats, 3, seed=derive_seed(cfg.seed, "modes", label) % (2**31))
    assert torch.allclose(out.stats["modes"][label].flatten(1), centroids)
    nearest = data.class_indices(label)[torch.cdist(centroids, feats).argmin(dim=1)]
    assert len(set(nearest.tolist()) & set(chosen)) >= 2  # ties aside, the nearest ones


def test_kmeans_real_in_latent_space_uses_the_generator(make_cfg):
    cfg = make_cfg("method=kmeans_real", "method.space=latents")
    data, method, generator = prepare_distillation(cfg)
    assert method.uses_generator and generator is not None
    out = distill_set(method, data, cfg.ipc, cfg.seed, generator)
    assert out.images.shape == (20, 1, 16, 16) and len(set(out.info["source_index"])) == 20


def test_herding_running_mean_tracks_the_class_mean_better_than_random():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(200, 16, generator=g) * torch.linspace(0.1, 3, 16)
    picked = herding(feats, 10)
    assert len(set(picked.tolist())) == 10
    assert picked[0] == (feats - feats.mean(0)).norm(dim=1).argmin()
    error = lambda idx: (feats[idx].mean(0) - feats.mean(0)).norm()  # noqa: E731
    random_errors = [error(torch.randperm(200, generator=g)[:10]) for _ in range(20)]
    assert error(picked) < min(random_errors)


def test_herding_method_picks_real_images_without_a_generator(make_cfg):
    cfg = make_cfg("method=herding")
    data, method, generator = prepare_distillation(cfg)
    assert generator is None
    out = distill_set(method, data, cfg.ipc, cfg.seed)
    assert torch.equal(out.images[:2], data.train.load_uint8(out.info["source_index"][:2]))


@pytest.mark.parametrize("method", ["kmeans_real", "herding", "random", "mgd3", "d4m"])
def test_ipc_larger_than_a_class_is_a_one_line_error(make_cfg, method):
    cfg = make_cfg(f"method={method}", "ipc=1000")
    with pytest.raises(UserError, match=r"ipc=1000 exceeds the \d+ train images of class") as err:
        prepare_distillation(cfg)
    assert "use ipc <=" in str(err.value) and "\n" not in str(err.value)


def test_unknown_feature_space_and_bad_strength_are_one_line_errors(make_cfg):
    with pytest.raises(UserError, match="unknown method.space 'clip'"):
        build(make_cfg("method=herding", "method.space=clip").method)
    with pytest.raises(UserError, match=r"strength must be in \(0, 1\]"):
        build(make_cfg("method=d4m", "method.strength=1.5").method)

"""The self-training recipe: length sized by the data, a time budget, the end-of-training probe,
the off-class warning, a cache key that follows the images, and the shipped weights."""

import json
import logging
import shutil
import time

import pytest
import torch
from omegaconf import OmegaConf

from ddapp.jobs import build
from ddcore.data.small import digits
from ddcore.errors import UserError
from ddcore.generators.probe import (
    _features,
    fit_probe,
    mean_pairwise_distance,
    real_test_accuracy,
)
from ddcore.generators.self_trained import cache, load_or_train, shipped
from ddcore.generators.self_trained.cache import cache_key
from ddcore.generators.self_trained.shipped import (
    SHIPPED_DIR,
    VAE_WEIGHTS_FILE,
    WEIGHTS_FILE,
    file_sha256,
    shipped_folder,
    shipped_hashes,
)
from ddcore.generators.self_trained.training import fit_length
from ddcore.sampling import sample_latents
from ddcore.seeding import rng_for
from tests.configs import generator_settings
from tests.test_self_trained import TINY

TRAIN = dict(batch_size=64, lr=1e-3, warmup_steps=1, label_dropout=0.1)


def test_length_follows_the_data_with_an_optional_step_cap():
    assert fit_length({**TRAIN, "epochs": 10}, 1347)["planned"] == 210  # 21 batches per epoch
    assert fit_length({**TRAIN, "epochs": 10}, 60000)["planned"] == 9370
    assert fit_length({**TRAIN, "epochs": 10, "steps": 50}, 60000)["planned"] == 50
    assert fit_length({**TRAIN, "epochs": 1, "max_minutes": 2}, 640)["kwargs"]["max_time"] == {"seconds": 120}
    with pytest.raises(UserError, match="epochs"):
        fit_length(TRAIN, 100)


def test_time_budget_stops_training_and_says_so(tmp_path, caplog):
    train = {**TINY["train"], "steps": None, "epochs": 50, "max_minutes": 0.0001}
    with caplog.at_level(logging.WARNING):
        generator = load_or_train(
            digits(), **generator_settings("dit_tiny", cache_dir=str(tmp_path), **{**TINY, "train": train})
        )
    assert generator.train_meta["steps"] < generator.train_meta["planned_steps"] == 50 * (1347 // 16)
    assert "stopped by the time budget" in caplog.text


def test_rewriting_train_images_in_place_changes_the_key_and_retrains(tmp_path):
    data = digits()
    spec = {"name": "x"}
    before = cache_key(data, spec)
    first = load_or_train(data, **generator_settings("dit_tiny", cache_dir=str(tmp_path), **TINY))
    data.train.images[0] = 255 - data.train.images[0]  # same count, same names, new pixels
    assert cache_key(data, spec) != before
    second = load_or_train(data, **generator_settings("dit_tiny", cache_dir=str(tmp_path), **TINY))
    assert second.folder != first.folder and (second.folder / "meta.json").is_file()


def test_rewriting_an_image_file_in_place_changes_the_key(tmp_path):
    """Folder datasets: same file names and count, new content (size/mtime) -> another key."""
    from PIL import Image

    from ddcore.data.folders import image_folder

    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("L", (8, 8), 40).save(tmp_path / split / c / "0.png")
    before = cache_key(image_folder(str(tmp_path), resolution=8, channels=1), {"name": "x"})
    time.sleep(0.01)
    Image.new("L", (8, 8), 220).save(tmp_path / "train" / "a" / "0.png")
    assert cache_key(image_folder(str(tmp_path), resolution=8, channels=1), {"name": "x"}) != before


def test_probe_reports_accuracy_real_ceiling_and_diversity(tmp_path, caplog):
    data = digits()
    probe = fit_probe(data)
    assert real_test_accuracy(probe, data) > 0.95  # the probe itself recognises real digits
    assert mean_pairwise_distance(torch.eye(3).numpy()) == pytest.approx(2**0.5)
    with caplog.at_level(logging.INFO):
        generator = load_or_train(
            data, **generator_settings("dit_tiny", cache_dir=str(tmp_path), **{**TINY, "probe_per_class": 2})
        )
    meta = json.loads((generator.folder / "meta.json").read_text())
    report = meta["probe"]
    assert meta["sample_accuracy"] == report["sample_accuracy"] == generator.sample_accuracy
    assert report["diversity_real"] > 0 and len(report["diversity_per_class"]) == 10
    assert "generated-sample accuracy" in caplog.text and "real" in caplog.text


def test_off_class_generator_warns_in_the_log_and_metrics_json(make_cfg, tmp_path, caplog):
    cfg = make_cfg(
        "task=distill",
        "method=unguided",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "debug.dit_tiny.probe_per_class=1",
        "generator.warn_below=1.01",
    )
    with caplog.at_level(logging.WARNING):
        build(cfg.task)(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    warning = metrics["generator/warning"]
    assert "samples are recognised as their class" in warning and warning in caplog.text
    assert "generator/sample_accuracy" in metrics


# -- shipped weights ------------------------------------------------------------------------
def ship(tmp_path, generator) -> tuple:
    """A shipped-weights root holding a copy of ``generator``'s cache folder, with its hash."""
    root = tmp_path / "weights"
    shutil.copytree(generator.folder, root / generator.folder.name)
    digest = file_sha256(root / generator.folder.name / WEIGHTS_FILE)
    (root / "SHA256SUMS").write_text(f"{digest}  {generator.folder.name}/{WEIGHTS_FILE}\n")
    return root, digest


def test_shipped_weights_are_used_by_default_hash_checked_and_retrain_ignores_them(tmp_path, monkeypatch):
    data = digits()
    trained = load_or_train(data, **generator_settings("dit_tiny", cache_dir=str(tmp_path / "a"), **TINY))
    root, _ = ship(tmp_path, trained)
    monkeypatch.setattr(shipped, "SHIPPED_DIR", root)
    start = time.perf_counter()
    used = load_or_train(data, **generator_settings("dit_tiny", cache_dir=str(tmp_path / "b"), **TINY))
    assert used.folder == root / trained.folder.name and time.perf_counter() - start < 5
    assert not (tmp_path / "b").exists()  # nothing trained
    fresh = load_or_train(
        data, **generator_settings("dit_tiny", cache_dir=str(tmp_path / "b"), retrain=True, **TINY)
    )
    assert fresh.folder.parent == tmp_path / "b"
    (root / "SHA256SUMS").write_text(f"{'0' * 64}  {trained.folder.name}/{WEIGHTS_FILE}\n")
    with pytest.raises(UserError, match="sha256"):
        load_or_train(data, **generator_settings("dit_tiny", cache_dir=str(tmp_path / "c"), **TINY))


def shipped_folders(dataset: str = ""):
    return sorted(p for p in SHIPPED_DIR.glob(f"{dataset}*") if (p / "meta.json").is_file())


def shipped_digits_folders():
    return shipped_folders("digits-")


@pytest.mark.parametrize("folder", shipped_folders(), ids=lambda p: p.name)
def test_every_shipped_folder_matches_sha256sums_and_the_model_card(folder):
    digest = shipped_hashes()[f"{folder.name}/{WEIGHTS_FILE}"]
    assert shipped_folder(folder.name) == folder and file_sha256(folder / WEIGHTS_FILE) == digest
    card = (SHIPPED_DIR / "MODEL_CARD.md").read_text()
    assert digest in card and f"## {folder.name}" in card
    if (folder / "vae").is_dir():  # a latent generator ships its VAE, hash-checked as well
        vae_digest = shipped_hashes()[f"{folder.name}/{VAE_WEIGHTS_FILE}"]
        assert file_sha256(folder / VAE_WEIGHTS_FILE) == vae_digest and vae_digest in card


@pytest.mark.parametrize("folder", shipped_digits_folders(), ids=lambda p: p.name)
def test_the_generator_config_finds_its_shipped_weights(make_cfg, folder):
    """``generator=<name>`` with its shipped config on digits resolves to the shipped folder:
    no training, and a run would report the card's sample accuracy without a warning."""
    name = json.loads((folder / "meta.json").read_text())["spec"]["name"]
    cfg = make_cfg(f"generator={name}", tiny=False)
    start = time.perf_counter()
    generator = build(cfg.generator, data=digits())
    assert generator.folder == folder and time.perf_counter() - start < 10
    assert generator.sample_accuracy >= 0.98 and generator.sample_warning is None


def test_digits_weights_ship():
    assert shipped_digits_folders(), f"no shipped digits generator under {SHIPPED_DIR}"


@pytest.mark.parametrize("folder", shipped_digits_folders(), ids=lambda p: p.name)
def test_shipped_digits_weights_sample_accuracy_on_a_small_probe(folder, make_cfg):
    """Offline, seconds: 3 samples per class (one batch, 50 DDPM steps, the config's CFG and
    grid) are recognised by the probe (the card says 99.5% on 200; untrained weights get ~10%)."""
    meta = json.loads((folder / "meta.json").read_text())
    data = digits()
    config = make_cfg(f"generator={meta['spec']['name']}", tiny=False).generator  # as composed
    generator = cache.saved_generator(
        folder,
        meta["spec"],
        data,
        cfg_scale=config.cfg_scale,
        timestep_spacing=OmegaConf.to_container(config.timestep_spacing),
    )
    labels = torch.arange(10).repeat(3)
    images = generator.decode(sample_latents(generator, labels, rng=rng_for(0, "shipped")))
    predicted = fit_probe(data).predict(_features(images, data.resolution))
    assert (predicted == labels.numpy()).mean() >= 0.9

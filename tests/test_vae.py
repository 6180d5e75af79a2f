"""The self-trained VAE: round trip, unit-variance latents, cache, and its one-line errors."""

import pytest
import torch

import ddcore.generators.vae as vae_module
from ddcore.data.small import digits
from ddcore.errors import UserError
from ddcore.generators.base import VAECodec
from ddcore.generators.vae import load_or_train_vae

TINY = {
    "arch": {"latent_channels": 2, "block_out_channels": [8, 8], "norm_num_groups": 4},
    "train": {"epochs": 2, "batch_size": 256, "lr": 2e-3},
    "trainer_kwargs": {"accelerator": "cpu", "devices": 1},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cache = tmp_path_factory.mktemp("vaes")
    data = digits()
    vae, meta = load_or_train_vae(data, cache_dir=str(cache), **TINY)
    return data, cache, vae, meta


def test_round_trip_and_unit_variance_latents(trained):
    data, _, vae, meta = trained
    codec = VAECodec(vae)
    images = data.class_images(3)[:16]
    latents = codec.encode(images * 1.0)
    assert latents.shape == (16, 2, 8, 8) and codec.latent_shape(2, 16) == (2, 8, 8)
    assert codec.decode(latents).shape == images.shape
    assert 0.0 < meta["test_reconstruction_mse"] < 0.25 and meta["scaling_factor"] > 0
    train = codec.encode(data.train.load(range(len(data.train))))
    assert abs(float(train.std()) - 1.0) < 0.05  # scaling_factor makes latents unit-variance


def test_cached_and_reused_without_training(trained, monkeypatch):
    data, cache, vae, meta = trained
    monkeypatch.setattr(vae_module, "train_vae", lambda *a, **k: pytest.fail("retrained"))
    again, meta_again = load_or_train_vae(data, cache_dir=str(cache), **TINY)
    assert meta_again == meta
    assert all(torch.equal(a, b) for a, b in zip(vae.state_dict().values(), again.state_dict().values()))


def test_bad_input_is_one_line(trained, tmp_path):
    data, cache, _, _ = trained
    with pytest.raises(UserError, match="does not divide the image size 16") as err:
        load_or_train_vae(data, cache_dir=str(tmp_path), arch={"block_out_channels": [8, 8, 8, 8, 8, 8]})
    assert "\n" not in str(err.value)
    folder = next(p for p in cache.iterdir() if p.is_dir())
    other = digits()
    other.name = "other_digits"
    with pytest.raises(UserError, match="trained on 'digits', not on other_digits"):
        load_or_train_vae(other, cache_dir=str(tmp_path), path=str(folder), **TINY)


def test_training_length_is_epochs_capped_by_a_wall_time_budget(trained, tmp_path, caplog):
    """epochs passes over the data (the meta says how many steps ran); max_minutes stops early
    with one warning, as the generators' budget does."""
    data, _, _, meta = trained
    assert meta["steps"] == meta["planned_steps"] == 2 * 6  # 2 epochs of ceil(1347 / 256) batches
    budget = {**TINY, "train": {**TINY["train"], "epochs": 1000, "max_minutes": 0.02}}
    _, short = load_or_train_vae(data, cache_dir=str(tmp_path), **budget)
    assert 0 < short["steps"] < short["planned_steps"] == 1000 * 6
    assert "stopped by the 0.02-minute budget" in caplog.text

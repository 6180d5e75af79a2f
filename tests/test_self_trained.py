"""The self-trained generator: trained once per (dataset, config), then reused from the cache."""

import errno
import json
import time
from pathlib import Path

import pytest
from diffusers import DDPMScheduler
from omegaconf import OmegaConf

from ddapp.jobs import build
from ddapp.stages import build_generator
from ddcore.data.small import digits
from ddcore.errors import CacheUnreadable, UserError
from ddcore.generators.self_trained import load_or_train
from tests.configs import generator_settings

TINY = dict(
    arch=dict(num_layers=1, num_attention_heads=2, attention_head_dim=8, patch_size=2),
    train=dict(steps=4, batch_size=16, lr=1e-3, warmup_steps=1, label_dropout=0.1),
    schedule=dict(num_train_timesteps=1000),
    trainer_kwargs=dict(accelerator="cpu"),
    probe_per_class=0,
)


def test_cache_is_reused_and_keyed_by_config(tmp_path):
    data = digits()
    first = load_or_train(data, **generator_settings("dit_tiny", cache_dir=str(tmp_path), **TINY))
    assert (first.folder / "denoiser" / "config.json").is_file()
    assert (first.folder / "checkpoints" / "last.ckpt").is_file()
    stamp = (first.folder / "meta.json").stat().st_mtime
    start = time.perf_counter()
    again = load_or_train(data, **generator_settings("dit_tiny", cache_dir=str(tmp_path), **TINY))
    assert again.folder == first.folder and (again.folder / "meta.json").stat().st_mtime == stamp
    assert time.perf_counter() - start < 5
    other = load_or_train(
        data, **generator_settings("dit_tiny", cache_dir=str(tmp_path), **{**TINY, "seed": 1})
    )
    assert other.folder != first.folder
    assert first.null_label == 10 and first.num_classes == 10


def test_train_generator_task_reports_the_folder(make_cfg):
    cfg = make_cfg("task=train_generator", "generator=unet_tiny")
    metrics = build(cfg.task)(cfg)
    folder = Path(metrics["generator/folder"])
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["class_ids"] == [str(d) for d in range(10)] and metrics["train_seconds"] > 0
    assert json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())["generator"] == "unet_tiny"


def disk_full(path):
    return OSError(errno.ENOSPC, "No space left on device", str(path))


def test_a_full_disk_while_training_into_the_cache_names_the_cache_and_leaves_no_temp(tmp_path, monkeypatch):
    """The generator's last save hits a full disk: one line naming the cache folder and its
    setting (not the ``.tmp`` folder it was written in), and nothing left in the cache."""

    def save_config(self, folder, *args, **kwargs):
        raise disk_full(Path(folder) / "scheduler_config.json")

    monkeypatch.setattr(DDPMScheduler, "save_config", save_config)
    with pytest.raises(UserError) as error:
        load_or_train(digits(), **generator_settings("dit_tiny", cache_dir=str(tmp_path), **TINY))
    line = str(error.value)
    assert f"in the cache folder {tmp_path}: No space left on device" in line
    assert "generator.cache_dir" in line and ".tmp" not in line
    assert only_lock_files(tmp_path)  # no entry, no temp folder


def only_lock_files(folder: Path) -> bool:
    """What a failed build leaves in the cache: its entry's lock file (``built_in_temp``)."""
    return all(p.is_file() and p.suffix == ".lock" for p in folder.iterdir())


def test_processes_that_build_one_entry_take_turns_and_the_second_builds_nothing(tmp_path):
    """Two jobs of a sweep reach the same missing entry: the first builds it, the second waits
    for the lock, then finds it built and builds nothing (before, the second removed the
    first's temp folder while it was being written)."""
    import subprocess
    import sys

    from ddcore.files import built_in_temp

    entry = tmp_path / "entry"
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from ddcore.files import built_in_temp\n"
        "with built_in_temp(Path(sys.argv[1]), 'generator.cache_dir') as tmp:\n"
        "    print('building', flush=True)\n"
        "    time.sleep(3)\n"
        "    (tmp / 'meta.json').write_text('{}')\n"
    )
    first = subprocess.Popen([sys.executable, "-c", script, str(entry)], stdout=subprocess.PIPE, text=True)
    assert first.stdout.readline() == "building\n"  # it holds the lock now
    with built_in_temp(entry, "generator.cache_dir") as tmp:
        assert tmp is None  # waited, then found it built
    assert first.wait(timeout=60) == 0 and (entry / "meta.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry", "entry.lock"]


def test_a_failed_vae_training_leaves_no_temp_folder(tmp_path, monkeypatch):
    import ddcore.generators.vae as vae_module
    from tests.test_vae import TINY as VAE

    def train_vae(data, spec, out_dir, trainer_kwargs):
        (out_dir / "vae").mkdir(parents=True)
        raise disk_full(out_dir / "vae" / "diffusion_pytorch_model.safetensors")

    monkeypatch.setattr(vae_module, "train_vae", train_vae)
    with pytest.raises(UserError, match=f"cache folder {tmp_path}: No space left on device"):
        vae_module.load_or_train_vae(digits(), cache_dir=str(tmp_path), **VAE)
    assert only_lock_files(tmp_path)  # no entry, no temp folder


def test_a_corrupt_cached_generator_is_one_line_saying_how_to_retrain(tmp_path):
    """Truncated weights in the cache: ``CacheUnreadable`` where they are read, and from
    ``build_generator`` the one line naming the generator, its cache and the fix."""
    data = digits()
    folder = load_or_train(data, **generator_settings("dit_tiny", cache_dir=str(tmp_path), **TINY)).folder
    for weights in folder.glob("denoiser/*.safetensors"):
        weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CacheUnreadable) as unreadable:
        load_or_train(data, **generator_settings("dit_tiny", cache_dir=str(tmp_path), **TINY))
    assert unreadable.value.folder == folder
    cfg = OmegaConf.create(
        {"generator": {"_target_": "ddcore.generators.self_trained.load_or_train", "name": "dit_tiny"}}
    )
    cfg.generator.update(generator_settings("dit_tiny", cache_dir=str(tmp_path), **TINY))
    with pytest.raises(UserError) as error:
        build_generator(cfg, data)
    assert str(error.value) == (
        f"the cached generator dit_tiny under {tmp_path} cannot be read "
        f"({unreadable.value.reason}): rerun with generator.retrain=true to train it again"
    )

"""The self-trained generator: trained once per (dataset, config), then reused from the cache."""

import json
import time
from pathlib import Path

from ddapp.tasks import build
from ddcore.data.small import digits
from ddcore.generators.self_trained import load_or_train

TINY = dict(
    arch=dict(num_layers=1, num_attention_heads=2, attention_head_dim=8, patch_size=2),
    train=dict(steps=4, batch_size=16, lr=1e-3, warmup_steps=1, label_dropout=0.1),
    schedule=dict(num_train_timesteps=1000),
    trainer_kwargs=dict(accelerator="cpu"),
)


def test_cache_is_reused_and_keyed_by_config(tmp_path):
    data = digits()
    first = load_or_train(data, cache_dir=str(tmp_path), **TINY)
    assert (first.folder / "denoiser" / "config.json").is_file()
    assert (first.folder / "checkpoints" / "last.ckpt").is_file()
    stamp = (first.folder / "meta.json").stat().st_mtime
    start = time.perf_counter()
    again = load_or_train(data, cache_dir=str(tmp_path), **TINY)
    assert again.folder == first.folder and (again.folder / "meta.json").stat().st_mtime == stamp
    assert time.perf_counter() - start < 5
    other = load_or_train(data, cache_dir=str(tmp_path), **{**TINY, "seed": 1})
    assert other.folder != first.folder
    assert first.null_label == 10 and first.num_classes == 10


def test_train_generator_task_reports_the_folder(make_cfg):
    cfg = make_cfg("task=train_generator", "generator=unet_tiny")
    metrics = build(cfg.task)(cfg)
    folder = Path(metrics["generator/folder"])
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["class_ids"] == [str(d) for d in range(10)] and metrics["train_seconds"] > 0
    assert json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())["generator"] == "unet_tiny"

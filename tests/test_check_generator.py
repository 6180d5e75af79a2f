"""task=check_generator: unguided samples per class, a grid, and the share a classifier gives
their class, with classifiers saved in timm's and torchvision's folder layouts."""

import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

import ddcore  # noqa: F401  (torchvision import fix before timm)
from ddapp.jobs import build
from ddcore.errors import UserError


def constant_head(head: torch.nn.Linear, label: int) -> None:
    """A head that outputs the same logits whatever the features: always ``label``."""
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[label] = 1.0


def timm_folder(folder: Path, label: int) -> Path:
    """A tiny timm model in the hub layout (config.json + model.safetensors), 1 channel, 16 px."""
    import timm
    from safetensors.torch import save_file

    net = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    constant_head(net.get_classifier(), label)
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "model.safetensors"))
    config = {
        "architecture": "test_resnet",
        "num_classes": 10,
        "pretrained_cfg": {"input_size": [1, 16, 16], "mean": [0.5], "std": [0.5]},
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def torchvision_folder(folder: Path, label: int) -> Path:
    """A torchvision model saved as torchvision names its weights: <arch>-<hash>.pth."""
    import torchvision

    net = torchvision.models.mobilenet_v3_small(num_classes=10)
    constant_head(net.classifier[-1], label)
    folder.mkdir()
    torch.save(net.state_dict(), folder / "mobilenet_v3_small-00000000.pth")
    return folder


def run_check(make_cfg, *overrides):
    cfg = make_cfg("task=check_generator", "check.images_per_class=2", *overrides)
    rows = cfg.check.classes or 10
    metrics = build(cfg.task)(cfg)
    out = Path(cfg.paths.output_dir)
    assert metrics == json.loads((out / "metrics.json").read_text())
    with Image.open(out / "figures" / "check_generator.png") as grid:
        assert grid.size[1] >= rows * 48  # one row per sampled class
    return metrics


def test_timm_classifier_that_always_says_class_0_gives_one_in_ten(make_cfg, tmp_path):
    folder = timm_folder(tmp_path / "timm", label=0)
    metrics = run_check(make_cfg, f"check.classifier={folder}", "check.classifier_space=dataset")
    assert metrics["check/share"] == pytest.approx(1 / 10, abs=0)  # 2 of 20 samples, exactly
    assert metrics["check/share_per_class"] == {str(c): float(c == 0) for c in range(10)}
    assert set(metrics["check/most_predicted"].values()) == {"0"}
    assert metrics["check/images_per_class"] == 2 and metrics["check/classes"] == 10


def test_torchvision_classifier_layout(make_cfg, tmp_path):
    folder = torchvision_folder(tmp_path / "tv", label=3)
    metrics = run_check(
        make_cfg, f"check.classifier={folder}", "check.classifier_space=dataset", "check.classes=4"
    )
    assert metrics["check/share"] == 1 / 4  # class 3 of the first 4
    assert metrics["check/share_per_class"] == {"0": 0.0, "1": 0.0, "2": 0.0, "3": 1.0}


def test_probe_share_matches_a_hand_computation(make_cfg):
    from ddapp.check_generator import sample_classes, settings
    from ddapp.stages import build_generator
    from ddcore.generators.probe import _features, fit_probe

    metrics = run_check(make_cfg, "check.classifier=probe")
    cfg = make_cfg("task=check_generator", "check.images_per_class=2")
    data = build(cfg.dataset)
    samples = sample_classes(build_generator(cfg, data), data, list(range(10)), settings(cfg))
    predicted = fit_probe(data).predict(_features(samples.images, data.resolution))
    assert metrics["check/share"] == pytest.approx(float((predicted == samples.labels.numpy()).mean()))


def test_without_a_classifier_only_the_grid(make_cfg, caplog):
    with caplog.at_level(logging.INFO, logger="ddapp.check_generator"):
        metrics = run_check(make_cfg, "check.classes=2")
    assert "no classifier" in caplog.text
    assert not any(k.startswith("check/share") for k in metrics)


def test_imagenet_space_refuses_non_imagenet_classes_before_sampling(make_cfg, tmp_path):
    folder = timm_folder(tmp_path / "timm", label=0)
    cfg = make_cfg("task=check_generator", f"check.classifier={folder}")  # imagenet1k space
    with pytest.raises(UserError, match="classifier_space=dataset"):
        build(cfg.task)(cfg)
    assert not (Path(cfg.paths.output_dir) / "figures" / "check_generator.png").exists()

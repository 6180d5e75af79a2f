"""The soft-label protocol's teacher: trained on the full real data, or loaded, and always checked.

A teacher is stored with what it was trained for: its architecture name, the dataset's class
ids *in label order*, resolution and channels, and its test accuracy. Loading refuses, in one
line, a checkpoint of another architecture, another class order (the anchors' issue trackers
report 10-point gaps from label-order mix-ups) or another resolution, and any file without
that record. A timm model's ImageNet-1k weights can also be read from a local folder; the
dataset's classes are then picked from its 1000 outputs by wnid.

Trained teachers are cached under ``cache_dir`` keyed by dataset (with a content digest of its
train images), architecture and training settings (``task=train_teacher`` retrains); the seed
is the teacher's own, so runs share it.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ddcore.data.base import ImageClassificationData, folder_safe
from ddcore.data.identity import source_digest
from ddcore.errors import UserError
from ddcore.files import atomic_write, load_plain, short_hash
from eval.students import arch_name, local_weights, timm_student, unwrap, with_normalization

log = logging.getLogger(__name__)
FORMAT = "dd-teacher-1"
DEFAULT_TRAIN = {
    "epochs": 100,
    "batch_size": 128,
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "milestones": (0.5, 0.75),
    "gamma": 0.1,
    "evals": 10,
    "augment": {"scale": (0.5, 1.0), "flip": "auto"},
    "cutmix": 0.0,
}


class SelectLogits(nn.Module):
    """Keeps the logits of the dataset's classes, in its label order (ImageNet-1k -> subset)."""

    def __init__(self, indices: list[int]):
        super().__init__()
        self.register_buffer("indices", torch.tensor(indices, dtype=torch.long))

    def forward(self, logits):
        return logits.index_select(1, self.indices)


def check_classes(saved: list[str], data: ImageClassificationData, source: str) -> None:
    if list(saved) == list(data.class_ids):
        return
    if sorted(saved) == sorted(data.class_ids):
        i = next(i for i, (a, b) in enumerate(zip(saved, data.class_ids)) if a != b)
        raise UserError(
            f"teacher {source} orders its classes differently from {data.name} (label {i} "
            f"is {saved[i]!r} for the teacher, {data.class_ids[i]!r} for the dataset): its "
            "soft labels would be wrong; retrain it with task=train_teacher"
        )
    missing = sorted(set(data.class_ids) - set(saved))[:3]
    raise UserError(
        f"teacher {source} was trained on other classes than {data.name} "
        f"(e.g. {missing} missing); retrain it with task=train_teacher"
    )


def check_arch(saved: str, wanted: str, source: str) -> None:
    if saved != wanted:
        raise UserError(
            f"teacher {source} is a {saved}, but eval.teacher.model asks for {wanted} "
            "(set eval.teacher.model to match, or retrain with task=train_teacher)"
        )


def save_teacher(path: Path, model: nn.Module, arch: str, data: ImageClassificationData, meta: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "format": FORMAT,
        "arch": arch,
        "dataset": data.name,
        "class_ids": list(data.class_ids),
        "resolution": data.resolution,
        "channels": data.channels,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
        **meta,
    }
    return atomic_write(path, lambda tmp: torch.save(record, tmp))


def read_record(path: Path) -> dict:
    record = load_plain(path, "teacher checkpoint", "replace it, or retrain it with task=train_teacher")
    keys = ("arch", "class_ids", "resolution", "channels", "state_dict")
    if not isinstance(record, dict) or record.get("format") != FORMAT or not all(k in record for k in keys):
        raise UserError(
            f"teacher checkpoint {path} has no architecture/class-order record (only "
            "files written by task=train_teacher are accepted; timm weights go in "
            "eval.teacher.pretrained_dir)"
        )
    return record


class Teacher:
    """Args (``eval.teacher``):
    model: the teacher's builder (a student config, e.g. ResNet18 with BatchNorm as RDED).
    checkpoint: a file written by ``task=train_teacher`` to use instead of the cache.
    pretrained_dir: a local folder with a timm model's ImageNet-1k weights (``model`` must be
        ``eval.students.timm_student``); an optional ``classes.txt`` lists its classes.
    cache_dir: where trained teachers are kept.
    train: training settings on the full real data (SGD + MultiStepLR, hard labels).
    seed: the teacher's own seed.
    overrides: ``{model: {...}, train: {...}}`` merged in (``debug=tiny`` shrinks it).
    """

    def __init__(
        self,
        model: Callable[..., nn.Module],
        checkpoint: str | None = None,
        pretrained_dir: str | None = None,
        cache_dir: str | None = None,
        train: dict | None = None,
        seed: int = 0,
        normalize: dict | None = None,
        overrides: dict | None = None,
    ):
        overrides, train, normalize = plain(overrides or {}), plain(train or {}), plain(normalize or {})
        model_overrides = dict(overrides.get("model") or {})
        self.model = functools.partial(model, **model_overrides) if model_overrides else model
        self.checkpoint, self.pretrained_dir = checkpoint, pretrained_dir
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.train_settings = {**DEFAULT_TRAIN, **dict(train or {}), **dict(overrides.get("train") or {})}
        self.seed, self.normalize = seed, dict(normalize or {})

    @property
    def arch(self) -> str:
        return arch_name(self.model)

    # -- where it comes from -----------------------------------------------------------------
    def cache_path(self, data: ImageClassificationData) -> Path:
        if self.cache_dir is None:
            raise UserError("eval.teacher.cache_dir is not set (no place to keep trained teachers)")
        digest = short_hash(
            {
                "arch": self.arch,
                "classes": list(data.class_ids),
                "train": self.train_settings,
                "resolution": data.resolution,
                "channels": data.channels,
                "train_images": len(data.train),
                "seed": self.seed,
                "train_digest": source_digest(data.train),  # rewritten images: retrain
                "normalize": self.normalize,
            },
            12,
        )
        return self.cache_dir / f"{data.name}-{folder_safe(self.arch)}-{digest}" / "teacher.pt"

    def get(
        self, data: ImageClassificationData, trainer_factory=None, train_if_missing: bool = True
    ) -> tuple[nn.Module, dict]:
        """The teacher (eval mode, frozen, normalization inside) and a description of it."""
        if self.pretrained_dir:
            model, meta = self.from_timm_folder(data), {"teacher/source": str(self.pretrained_dir)}
        elif self.checkpoint:
            model, meta = self.load(Path(self.checkpoint), data)
        else:
            path = self.cache_path(data)
            if path.is_file():
                model, meta = self.load(path, data)
            elif train_if_missing:
                model, meta = self.train(data, trainer_factory)
            else:
                raise UserError(
                    f"no trained teacher for {data.name} at {path} (run task=train_teacher first)"
                )
        return frozen(model), {"teacher/arch": self.arch, **meta}

    def load(self, path: Path, data: ImageClassificationData) -> tuple[nn.Module, dict]:
        if not path.is_file():
            raise UserError(f"teacher checkpoint not found: {path} (set eval.teacher.checkpoint)")
        record = read_record(path)
        check_arch(record["arch"], self.arch, str(path))
        check_classes(record["class_ids"], data, str(path))
        if (record["resolution"], record["channels"]) != (data.resolution, data.channels):
            raise UserError(
                f"teacher {path} was trained at {record['resolution']}px with "
                f"{record['channels']} channels; {data.name} is {data.resolution}px with "
                f"{data.channels} (retrain it with task=train_teacher)"
            )
        model = self.build(data)
        try:
            model.load_state_dict(record["state_dict"])
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1].strip()
            raise UserError(f"teacher {path} does not fit {self.arch}: {first}") from exc
        log.info(f"teacher {self.arch} loaded from {path} (test acc {record.get('test_acc')})")
        return model, {"teacher/source": str(path), "teacher/test_acc": record.get("test_acc")}

    def build(self, data: ImageClassificationData) -> nn.Module:
        net = self.model(in_channels=data.channels, num_classes=data.num_classes, resolution=data.resolution)
        return with_normalization(net, data.channels, self.normalize.get("mean"), self.normalize.get("std"))

    def from_timm_folder(self, data: ImageClassificationData) -> nn.Module:
        """ImageNet-1k timm weights from a local folder; the dataset's classes picked by wnid."""
        import timm

        from ddcore.data.classes import imagenet1k_wnids

        func, keywords = unwrap(self.model)
        if func is not timm_student:
            raise UserError(
                "eval.teacher.pretrained_dir needs a timm teacher "
                "(eval.teacher.model._target_=eval.students.timm_student)"
            )
        folder = Path(self.pretrained_dir)
        listed = folder / "classes.txt"
        classes = listed.read_text().split() if listed.is_file() else imagenet1k_wnids()
        unknown = [c for c in data.class_ids if c not in classes]
        if unknown:
            raise UserError(
                f"teacher weights in {folder} do not cover {data.name}'s classes "
                f"(e.g. {unknown[:3]}; its classes are {classes[:2]}...)"
            )
        name = keywords.get("name", "resnet50")
        net = timm.create_model(
            name,
            pretrained=True,
            in_chans=data.channels,
            pretrained_cfg_overlay={"file": str(local_weights(str(folder)))},
        )
        if net.num_classes != len(classes):
            raise UserError(
                f"teacher weights in {folder} have {net.num_classes} outputs but "
                f"{len(classes)} classes are listed"
            )
        cfg = net.pretrained_cfg
        model = with_normalization(
            net,
            data.channels,
            self.normalize.get("mean") or cfg.get("mean"),
            self.normalize.get("std") or cfg.get("std"),
        )
        return nn.Sequential(model, SelectLogits([classes.index(c) for c in data.class_ids]))

    # -- training ------------------------------------------------------------------------------
    def protocol(self):
        from eval.hard_label import HardLabelProtocol

        t = dict(self.train_settings)
        return HardLabelProtocol(
            self.model,
            epochs=t["epochs"],
            lr=t["lr"],
            momentum=t["momentum"],
            weight_decay=t["weight_decay"],
            batch_size=t["batch_size"],
            milestones=t["milestones"],
            gamma=t["gamma"],
            evals=t["evals"],
            repeats=1,
            cutmix=t["cutmix"],
            augment={"color_jitter": None, "lighting": 0.0, **t["augment"]},
            normalize=self.normalize,
        )

    def train(self, data: ImageClassificationData, trainer_factory) -> tuple[nn.Module, dict]:
        """Train on the full real train split, test, and save into the cache."""
        from eval.batches import TrainSet

        if trainer_factory is None:
            raise UserError("training a teacher needs a trainer (trainer=cpu|gpu)")
        protocol = self.protocol()
        log.info(
            f"training teacher {self.arch} on {len(data.train)} {data.name} images "
            f"for {self.train_settings['epochs']} epochs"
        )
        start = time.perf_counter()
        train = TrainSet.from_source(data.train, protocol.max_bank_gb, protocol.num_workers)
        module = protocol.train_module(
            train, data, self.train_settings["epochs"], self.seed, trainer_factory, prefix="teacher"
        )
        meta = {
            "test_acc": module.final_acc,
            "train_seconds": round(time.perf_counter() - start, 1),
            "train": json.loads(json.dumps(self.train_settings, default=list)),
        }
        model = module.student.cpu()
        path = save_teacher(self.cache_path(data), model, self.arch, data, meta)
        log.info(f"teacher test accuracy {module.final_acc:.4f}; saved to {path}")
        return model, {
            "teacher/source": str(path),
            "teacher/test_acc": module.final_acc,
            "teacher/train_seconds": meta["train_seconds"],
        }


def plain(node):
    """Config containers as plain dicts/lists (cache keys hash their JSON)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node


def frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model

"""A frozen classifier that a method consults (its *observer*): RDED scores crops with it, SRe2L
inverts it. Shared by ``baselines/rded.py`` and ``baselines/sre2l.py``.

``observer: teacher`` is the soft-label protocol's teacher (``eval.teacher``: its cache, trained
there if missing); a folder holds a timm/torchvision classifier, read by
``task=check_generator``'s loader with ``observer_space`` (``imagenet1k``: the class's output is
the ImageNet-1k index of its wnid; ``dataset``: output = label). Both loaders arrive as objects
built by the application from the method's config: methods do not import ``eval/`` or
``ddapp/``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ddcore.data.base import ImageClassificationData, resize_images
from ddcore.distributed import bind_device, main_first
from ddcore.errors import UserError
from ddcore.sharding import full_precision

log = logging.getLogger(__name__)


def auto_or_int(value) -> str | int:
    """A setting that is ``auto`` or an integer (the schema keeps it a string; the config check
    ``ddapp.config_checks.auto_or_integer`` has refused anything else)."""
    text = str(value).strip().lower()
    return "auto" if text == "auto" else int(text)


SPACES = ("imagenet1k", "dataset")
# the folder loader is task=check_generator's: its messages name that task's settings
RENAMED = {"check.classifier_space": "method.observer_space", "check.classifier_arch": "method.observer_arch"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # observers without their own


class Observer(nn.Module):
    """A frozen classifier of [0, 1] images (normalization inside); ``outputs[label]`` is the
    label's logit. Its state (weights and outputs) keys RDED's score cache."""

    def __init__(self, model: nn.Module, outputs: list[int], size: int, channels: int, name: str):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.register_buffer("outputs", torch.tensor(outputs, dtype=torch.long))
        self.size, self.channels, self.name = int(size), int(channels), name

    def _normalize_module(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        for module in self.model.modules():
            mean, std = getattr(module, "mean", None), getattr(module, "std", None)
            if isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor):
                return mean.detach().float().flatten().cpu(), std.detach().float().flatten().cpu()
        return None

    def pad_fill(self, channels: int) -> torch.Tensor:
        """Pixel value that the observer's normalization maps to 0: the official code pads the
        *normalized* crops with zeros, i.e. with the normalization mean in pixels."""
        found = self._normalize_module()
        if found is None:
            return torch.zeros(channels)
        return per_channel(found[0], channels)

    def normalization(self, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) per image channel of the observer's input normalization; ImageNet's
        (SRe2L's official constants) for an observer without one."""
        found = self._normalize_module() or (torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD))
        return per_channel(found[0], channels), per_channel(found[1], channels)

    def batchnorms(self) -> list[nn.BatchNorm2d]:
        """Its BatchNorm2d layers with running statistics, in module order (timm's
        BatchNormAct2d is one)."""
        return [
            m
            for m in self.model.modules()
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None
        ]

    def fit_input(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images at the observer's size and channel count (differentiable: no clamp)."""
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        if x.shape[1] != self.channels:
            x = x.mean(dim=1, keepdim=True) if self.channels == 1 else x.expand(-1, self.channels, -1, -1)
        return x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The dataset's classes' logits (label order) for [0, 1] images at the observer's size."""
        return self.model(x).float().index_select(1, self.outputs)

    @torch.no_grad()
    def losses(self, canvases: torch.Tensor, label: int) -> torch.Tensor:
        """Cross-entropy on ``label`` over the dataset's classes, for full-size [0, 1] canvases."""
        x = resize_images(canvases, self.size)
        if x.shape[1] != self.channels:
            x = x.mean(dim=1, keepdim=True) if self.channels == 1 else x.expand(-1, self.channels, -1, -1)
        device = self.outputs.device
        with full_precision(device):  # fp32 scores, as the official code (no autocast)
            logits = self.logits(x.to(device))
        target = torch.full((len(x),), label, dtype=torch.long, device=device)
        return F.cross_entropy(logits, target, reduction="none").cpu()


def per_channel(values: torch.Tensor, channels: int) -> torch.Tensor:
    return values[:channels] if len(values) >= channels else values.mean().repeat(channels)


def observer_device(trainer) -> torch.device:
    """The trainer config's accelerator (hardware choices live in conf/trainer)."""
    accelerator = str((getattr(trainer, "keywords", None) or {}).get("accelerator", "auto"))
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return bind_device(torch.device("cuda")) if cuda and torch.cuda.is_available() else torch.device("cpu")


def observer_space_note(space: str) -> str:
    return "outputs by ImageNet-1k wnid" if space == "imagenet1k" else "output = label"


class ObserverSource:
    """Where a method's observer comes from (``method.observer``), checked and loaded once per
    dataset: the teacher, or a classifier folder.

    Args: method: the method's name (logs). observer: ``teacher`` or a folder. observer_space,
    observer_arch: for folder observers. teacher: the ``eval.teacher`` object (duck-typed
    ``get(data, trainer, train_if_missing)``). classifier: loader ``(folder, settings, data) ->
    classifier`` (``ddapp.check_generator.folder_classifier``). trainer: the trainer factory (to
    train a missing teacher; its accelerator places the observer).
    """

    def __init__(self, method: str, observer, observer_space, observer_arch, teacher, classifier, trainer):
        if not str(observer or "").strip():
            raise UserError("method.observer is empty: use teacher or a classifier folder")
        if observer_space not in SPACES:
            raise UserError(f"method.observer_space={observer_space!r}: use one of {', '.join(SPACES)}")
        self.method, self.name, self.space, self.arch = method, str(observer), observer_space, observer_arch
        self.teacher, self.classifier, self.trainer = teacher, classifier, trainer
        self._loaded: tuple[ImageClassificationData, Observer] | None = None

    def check(self) -> None:
        if self.name == "teacher":
            if self.teacher is None:
                raise UserError(
                    "method.observer=teacher uses the soft-label teacher, but this eval has none "
                    "(use eval=soft_label, or method.observer=<classifier folder>)"
                )
        elif not Path(self.name).exists():
            raise UserError(
                f"method.observer={self.name}: no such folder (use teacher, or a folder "
                "with a timm or torchvision classifier)"
            )

    def get(self, data: ImageClassificationData) -> Observer:
        """The observer for ``data`` on the trainer's device (loaded on rank 0 first)."""
        if self._loaded is None or self._loaded[0] is not data:
            self.check()
            observer = main_first(f"{self.method}-observer", lambda: self.load(data))
            self._loaded = (data, observer.to(observer_device(self.trainer)))
        return self._loaded[1]

    def load(self, data: ImageClassificationData) -> Observer:
        if self.name == "teacher":
            model, meta = self.teacher.get(data, self.trainer)
            log.info(f"{self.method} observer: the teacher {meta.get('teacher/source', '')}")
            return Observer(model, list(range(data.num_classes)), data.resolution, data.channels, "teacher")
        folder = Path(self.name)
        settings = {"classifier_arch": self.arch, "classifier_space": self.space}
        try:
            found = self.classifier(folder, settings, data)
        except UserError as exc:
            message = str(exc)
            for old, new in RENAMED.items():
                message = message.replace(old, new)
            raise UserError(f"method.observer: {message}") from None
        size = found.size or data.resolution
        log.info(f"{self.method} observer: {folder} ({observer_space_note(self.space)}, {size} px)")
        return Observer(found.model, list(found.outputs), size, found.channels or data.channels, folder.name)

"""``task=check_generator``: a minute's look at the generator before hours of sampling.

A few plain (unguided, method-independent) samples per class go to
``figures/check_generator.png``; with a classifier (``check.classifier``) the share of samples
classified as their own class goes to ``metrics.json``, per class and overall. A wrong wnid ->
ImageNet-index mapping or a broken CFG shows up as a share near chance and, per class, as the
class the samples were taken for instead (``check/most_predicted``).

Classifiers (``check.classifier``):
    <folder>  a local checkpoint folder: timm's layout (``config.json`` with ``architecture`` and
              ``pretrained_cfg``, plus ``model.safetensors`` / ``pytorch_model.bin``) or
              torchvision's (one ``<arch>-<hash>.pth`` state dict; ``check.classifier_arch``
              names the architecture when the file name does not)
    probe     the logistic-regression probe on the real train images (ddcore/generators/probe.py;
              seconds on small sets, for self-trained generators)
    teacher   the soft-label protocol's cached teacher (eval=soft_label; never trained here)
    null      no classifier: the grid only

``check.classifier_space``: ``imagenet1k`` (output index of class c = the ImageNet-1k index of
its wnid, or its line in the folder's ``classes.txt``) or ``dataset`` (index = label).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ddapp.devices import resolve_device
from ddapp.figures import save_grid
from ddapp.jobs import build, finish, job, make_logger, output_dir
from ddapp.stages import build_generator
from ddcore.data.base import ImageClassificationData, resize_images
from ddcore.distilled import DistilledSet
from ddcore.errors import UserError
from ddcore.sampling import sample_latents
from ddcore.seeding import rng_for

log = logging.getLogger(__name__)
SPACES = ("imagenet1k", "dataset")
DEFAULTS = {
    "images_per_class": 4,
    "classes": None,
    "classifier": None,
    "classifier_space": "imagenet1k",
    "classifier_arch": None,
    "steps": 50,
    "sampler": "ddpm",
    "cfg_scale": None,
    "batch_size": 64,
    "seed": 0,
}


@dataclass
class Classifier:
    """A frozen model taking [0, 1] images (normalization inside) at ``size`` px with ``channels``
    channels; ``outputs[c]`` is the output index of dataset label c (None: class not covered)."""

    model: nn.Module | None
    size: int | None
    channels: int | None
    outputs: list[int]
    names: list[str] | None = None  # what each output index is (class id / wnid): most_predicted
    predict_fn: object = None  # probe: images -> predicted indices, instead of model

    @torch.no_grad()
    def predict(self, images01: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        if self.predict_fn is not None:
            return self.predict_fn(images01)
        device = next(self.model.parameters()).device
        out = []
        for chunk in images01.split(batch_size):
            chunk = resize_images(chunk, self.size) if self.size else chunk
            chunk = match_channels(chunk, self.channels)
            out.append(self.model(chunk.to(device)).argmax(dim=1).cpu())
        return torch.cat(out)


def match_channels(images: torch.Tensor, channels: int | None) -> torch.Tensor:
    if channels is None or images.shape[1] == channels:
        return images
    return images.mean(dim=1, keepdim=True) if channels == 1 else images.expand(-1, channels, -1, -1)


# -- settings ---------------------------------------------------------------------------------------
def settings(cfg: DictConfig) -> dict:
    given = cfg.get("check") or {}
    given = OmegaConf.to_container(given, resolve=True) if isinstance(given, DictConfig) else dict(given)
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise UserError(f"unknown setting check.{unknown[0]} (known: {', '.join(DEFAULTS)})")
    s = {**DEFAULTS, **given}
    if not isinstance(s["images_per_class"], int) or s["images_per_class"] < 1:
        raise UserError(f"check.images_per_class must be >= 1, got {s['images_per_class']!r}")
    if s["classes"] is not None and (not isinstance(s["classes"], int) or s["classes"] < 1):
        raise UserError(
            f"check.classes must be null (all) or the number of first classes, got {s['classes']!r}"
        )
    if s["classifier_space"] not in SPACES:
        raise UserError(
            f"check.classifier_space must be one of: {', '.join(SPACES)}, got {s['classifier_space']!r}"
        )
    return s


# -- classifiers ------------------------------------------------------------------------------------
def output_indices(
    data: ImageClassificationData, space: str, listed: list[str] | None, source: str
) -> list[int]:
    """Output index of each dataset label: by wnid in ImageNet-1k (or the folder's classes.txt)
    order, or the label itself."""
    if space == "dataset":
        return list(range(data.num_classes))
    from ddcore.data.classes import imagenet1k_wnids

    order = listed or imagenet1k_wnids()
    position = {wnid: i for i, wnid in enumerate(order)}
    missing = [c for c in data.class_ids if c not in position]
    if missing:
        raise UserError(
            f"classifier {source} knows ImageNet-1k classes but {data.name} has {len(missing)} that "
            f"are not among them (e.g. {missing[0]!r}); for a classifier of the dataset's own "
            "classes set check.classifier_space=dataset"
        )
    return [position[c] for c in data.class_ids]


def output_names(data: ImageClassificationData, space: str, listed: list[str] | None) -> list[str]:
    if listed:
        return listed
    if space == "dataset":
        return list(data.class_ids)
    from ddcore.data.classes import imagenet1k_wnids

    return imagenet1k_wnids()


def read_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_strict(net: nn.Module, state: dict, folder: Path) -> nn.Module:
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise UserError(f"classifier weights in {folder} do not fit the model: {first}") from exc
    return net


def timm_folder(folder: Path, arch: str | None):
    """timm's hub layout: config.json (architecture, num_classes, pretrained_cfg) + weights."""
    import timm

    from eval.students import local_weights

    config = json.loads((folder / "config.json").read_text())
    name = arch or config.get("architecture")
    if not name:
        raise UserError(f"{folder}/config.json names no architecture (set check.classifier_arch)")
    pretrained = config.get("pretrained_cfg") or {}
    channels, size = (
        (pretrained.get("input_size") or [3, 224, 224])[0],
        (pretrained.get("input_size") or [3, 224, 224])[-1],
    )
    net = timm.create_model(name, num_classes=config.get("num_classes", 1000), in_chans=channels)
    load_strict(net, read_state_dict(local_weights(str(folder))), folder)
    return net, pretrained.get("mean"), pretrained.get("std"), size, channels


def torchvision_folder(folder: Path, arch: str | None):
    """torchvision's layout: one ``<arch>-<hash>.pth`` state dict (3 channels, 224 px)."""
    import torchvision

    from eval.students import local_weights

    weights = local_weights(str(folder))
    name = arch or weights.name.split("-")[0].split(".")[0]
    if name not in torchvision.models.list_models():
        raise UserError(f"{weights.name}: {name!r} is not a torchvision model (set check.classifier_arch)")
    state = read_state_dict(weights)
    heads = [v for k, v in state.items() if k.endswith("weight") and v.ndim == 2]
    net = torchvision.models.get_model(name, weights=None, num_classes=heads[-1].shape[0] if heads else 1000)
    return load_strict(net, state, folder), None, None, 224, 3


def folder_classifier(folder: Path, s: dict, data: ImageClassificationData) -> Classifier:
    from eval.students import with_normalization

    if not folder.exists():
        raise UserError(
            f"check.classifier={folder}: no such folder (a timm or torchvision checkpoint folder)"
        )
    folder = folder if folder.is_dir() else folder.parent
    load = timm_folder if (folder / "config.json").is_file() else torchvision_folder
    net, mean, std, size, channels = load(folder, s["classifier_arch"])
    listed = folder / "classes.txt"
    listed = listed.read_text().split() if listed.is_file() else None
    outputs = output_indices(data, s["classifier_space"], listed, str(folder))
    model = with_normalization(net, channels, mean, std).eval().requires_grad_(False)
    return Classifier(model, size, channels, outputs, names=output_names(data, s["classifier_space"], listed))


def probe_classifier(data: ImageClassificationData) -> Classifier:
    from ddcore.generators.probe import _features, fit_probe

    probe = fit_probe(data)

    def predict(images01: torch.Tensor) -> torch.Tensor:
        images = resize_images(match_channels(images01, data.channels), data.resolution)
        return torch.as_tensor(probe.predict(_features(images, data.resolution)))

    labels = list(range(data.num_classes))
    return Classifier(None, None, None, labels, names=list(data.class_ids), predict_fn=predict)


def teacher_classifier(cfg: DictConfig, data: ImageClassificationData) -> Classifier:
    if not cfg.eval.get("teacher"):
        raise UserError("check.classifier=teacher needs eval=soft_label (its teacher is the classifier)")
    model, _ = build(cfg.eval.teacher).get(data, None, train_if_missing=False)
    labels = list(range(data.num_classes))
    return Classifier(model, data.resolution, data.channels, labels, names=list(data.class_ids))


def load_classifier(cfg: DictConfig, s: dict, data: ImageClassificationData) -> Classifier | None:
    """The classifier named by ``check.classifier``, or None (grid only)."""
    choice = s["classifier"]
    if choice is None:
        return None
    if choice == "probe":
        return probe_classifier(data)
    if choice == "teacher":
        return teacher_classifier(cfg, data)
    return folder_classifier(Path(str(choice)), s, data)


# -- sampling and scoring ---------------------------------------------------------------------------
def sample_classes(generator, data: ImageClassificationData, labels: list[int], s: dict) -> DistilledSet:
    """``images_per_class`` unguided samples of each label; sample j of class c has its own
    noise (``rng_for(seed, "check", c, j)``), so the images do not depend on the batch size."""
    rows = torch.tensor([c for c in labels for _ in range(s["images_per_class"])], dtype=torch.long)
    rngs = [
        rng_for(s["seed"], "check", int(c), j % s["images_per_class"]) for j, c in enumerate(rows.tolist())
    ]
    images = []
    for start in range(0, len(rows), s["batch_size"]):
        part = slice(start, start + s["batch_size"])
        latents = sample_latents(
            generator,
            rows[part],
            rng=rngs[part],
            steps=s["steps"],
            sampler=s["sampler"],
            cfg_scale=s["cfg_scale"],
        )
        images.append(generator.decode(latents).cpu())
    return DistilledSet(torch.cat(images), rows)


def shares(
    samples: DistilledSet, classifier: Classifier, data: ImageClassificationData, labels: list[int]
) -> dict:
    """Share of samples whose predicted index is their class's, per class and overall; the
    share when only the sampled dataset classes compete; the most predicted output per class."""
    predicted = classifier.predict(samples.images)
    wanted = torch.tensor(classifier.outputs)[samples.labels]
    hits = predicted == wanted
    per_class, most = {}, {}
    for c in labels:
        rows = samples.labels == c
        per_class[data.class_ids[c]] = int(hits[rows].sum()) / int(rows.sum())
        index, _ = Counter(predicted[rows].tolist()).most_common(1)[0]
        most[data.class_ids[c]] = output_name(index, classifier)
    return {
        "check/share": int(hits.sum()) / len(hits),
        "check/share_per_class": per_class,
        "check/most_predicted": most,
    }


def output_name(index: int, classifier: Classifier) -> str:
    """What output ``index`` means: a class id or wnid where the classifier's names are known."""
    names = classifier.names or []
    return names[index] if 0 <= index < len(names) else str(index)


# -- the task ---------------------------------------------------------------------------------------
def check_generator(cfg: DictConfig) -> dict:
    with job(cfg):
        return _check_generator(cfg)


def _check_generator(cfg: DictConfig) -> dict:
    s = settings(cfg)
    data: ImageClassificationData = build(cfg.dataset)
    labels = list(range(min(s["classes"] or data.num_classes, data.num_classes)))
    classifier = load_classifier(cfg, s, data)  # before sampling: a bad folder costs seconds
    device = resolve_device(cfg.trainer.accelerator)
    generator = build_generator(cfg, data).to(device)
    if classifier is not None and classifier.model is not None:
        classifier.model.to(device)
    samples = sample_classes(generator, data, labels, s)
    title = f"check_generator: {getattr(generator, 'name', 'generator')} on {data.name}, unguided"
    grid = save_grid(
        samples,
        data,
        output_dir(cfg) / "figures" / "check_generator.png",
        max_per_class=s["images_per_class"],
        max_classes=len(labels),
        title=title,
    )
    metrics = {
        "dataset": data.name,
        "generator": getattr(generator, "name", None),
        "check/images_per_class": s["images_per_class"],
        "check/classes": len(labels),
        "check/cfg_scale": generator.cfg_scale if s["cfg_scale"] is None else s["cfg_scale"],
        "check/grid": str(grid),
        "check/classifier": None if s["classifier"] is None else str(s["classifier"]),
    }
    if classifier is None:
        log.info(f"no classifier (check.classifier=<folder>|probe|teacher): wrote only the grid {grid}")
        return finish(cfg, metrics, make_logger(cfg))
    metrics["check/classifier_space"] = (
        s["classifier_space"] if s["classifier"] not in ("probe", "teacher") else "dataset"
    )
    metrics.update(shares(samples, classifier, data, labels))
    log.info(
        f"{metrics['check/share']:.3f} of {len(samples)} samples classified as their class "
        f"(chance among the dataset's classes: {1 / data.num_classes:.3f}); grid: {grid}"
    )
    return finish(cfg, metrics, make_logger(cfg))

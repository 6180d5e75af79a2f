"""RDED (method=rded) with tiny observers on digits and a hand-made Tiny-ImageNet tree.

Geometry on hand-made inputs (crops, official zero padding, stitching order from known losses);
the cached re-selection (zero observer calls for a second IPC, same set as a fresh run); the
factor rule; a folder (torchvision) observer; the run end to end through the configs; class
folders read back by task=evaluate in the framework's label order; one-line errors.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from baselines.rded import crop_boxes, keep_best, pad_center, rank, stitch
from ddapp.jobs import build
from ddapp.schemas import RDEDSchema, from_schema
from ddcore.data.small import digits
from ddcore.errors import UserError
from ddcore.seeding import rng_for
from tests.distill import evaluate_folder
from tests.scores import assert_students_scored


class Normalize(nn.Module):
    def __init__(self, mean: float, std: float):
        super().__init__()
        self.register_buffer("mean", torch.tensor([mean]).view(1, 1, 1, 1))
        self.register_buffer("std", torch.tensor([std]).view(1, 1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class CountedTeacher:
    """Stands in for eval.teacher.Teacher (``get``): a fixed linear classifier that counts its
    forward passes and the images it saw."""

    def __init__(self, seed: int = 0, classes: int = 10, side: int = 16):
        torch.manual_seed(seed)
        self.model = nn.Sequential(Normalize(0.25, 0.5), nn.Flatten(), nn.Linear(side * side, classes))
        self.calls = self.images = 0
        self.model.register_forward_hook(self.count)

    def count(self, module, inputs, output):
        self.calls += 1
        self.images += len(inputs[0])

    def get(self, data, trainer_factory=None, train_if_missing=True):
        return self.model, {"teacher/source": "test"}


@pytest.fixture(scope="module")
def data():
    return digits()


def rded(teacher=None, cache=None, **kwargs):
    settings = {"mipc": 30, "num_crop": 3, **kwargs}
    return from_schema(
        RDEDSchema,
        teacher=teacher or CountedTeacher(),
        score_cache=cache is not None,
        score_cache_dir=cache,
        **settings,
    )


# -- geometry on hand-made inputs -------------------------------------------------------------------
def test_stitching_puts_rank_k_ipc_plus_i_in_slot_k_of_image_i():
    """Known losses -> known grid positions: the best crop of each image is kept, the class's
    crops are ranked, and slot k (row-major) of image i holds rank k * ipc + i."""
    ipc, factor = 2, 2
    # 10 images x 3 crops; image j's best crop (loss j / 10) is at crop j % 3; image 9 is worst
    losses = torch.full((10, 3), 5.0)
    for j in range(10):
        losses[j, j % 3] = j / 10
    losses[4] = torch.tensor([0.95, 0.99, 0.97])  # image 4: best crop 0, ranked last but one kept
    index, kept = keep_best(losses)
    assert index.tolist() == [0, 1, 2, 0, 0, 2, 0, 1, 2, 0] and kept[4] == pytest.approx(0.95)
    order = rank(kept, ipc * factor**2)
    assert order.tolist() == [0, 1, 2, 3, 5, 6, 7, 8]  # image 4 (0.95) and 9 (0.9) drop out
    patches = torch.stack([torch.full((1, 4, 4), float(j)) for j in order.tolist()])  # value = image
    images = stitch(patches, factor, ipc, 8)
    slots = {"top-left": (0, 0), "top-right": (0, 4), "bottom-left": (4, 0), "bottom-right": (4, 4)}
    grid = {name: [int(images[i, 0, r, c]) for i in range(ipc)] for name, (r, c) in slots.items()}
    assert grid == {"top-left": [0, 1], "top-right": [2, 3], "bottom-left": [5, 6], "bottom-right": [7, 8]}


def test_stitching_odd_resolution_widens_the_first_row_and_column():
    patches = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 1, 3, 3)
    image = stitch(patches, 2, 1, 7)[0, 0]  # 7 = 4 + 3: the first row and column are 4 wide
    assert image[:4, :4].eq(0).all() and image[:4, 4:].eq(1).all()
    assert image[4:, :4].eq(2).all() and image[4:, 4:].eq(3).all()


def test_crops_are_square_seeded_and_inside_the_image():
    boxes = crop_boxes(rng_for(0, "rded", "c", 1), 16, 200, (0.08, 1.0))
    again = crop_boxes(rng_for(0, "rded", "c", 1), 16, 200, (0.08, 1.0))
    assert torch.equal(boxes, again)
    top, left, size = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + size <= 16).all() and (left + size <= 16).all()
    assert size.min() >= round((0.08 * 256) ** 0.5) and size.max() == 16 and len(set(size.tolist())) > 5


def test_padding_is_centered_and_zero_after_the_observers_normalization():
    """The official code pads *normalized* crops with zeros (smaller half top/left)."""
    crops = torch.ones(1, 1, 3, 3)
    canvas = pad_center(crops, 8, torch.tensor([0.25]))
    assert canvas[0, 0, 2:5, 2:5].eq(1).all() and canvas[0, 0].sum() == 9 + 0.25 * (64 - 9)
    method = rded()
    observer = method.observer(digits())
    assert observer.pad_fill(1).tolist() == [0.25]  # Normalize(0.25, .) maps it to 0


# -- scores cached: another ipc without the observer -------------------------------------------------
def test_a_second_ipc_reselects_from_the_cache_with_zero_observer_calls(data, tmp_path):
    teacher = CountedTeacher()
    first, _ = rded(teacher, str(tmp_path / "scores")).distill_class(data, 3, 2, 0)
    assert teacher.calls > 0 and teacher.images == 30 * 3  # mipc x num_crop crops scored
    scored = teacher.calls
    again = rded(teacher, str(tmp_path / "scores"))  # a new run with another ipc reads the cache
    second, info = again.distill_class(data, 3, 5, 0)
    assert teacher.calls == scored and again.timings["scored_images"] == 0
    fresh, fresh_info = rded(CountedTeacher(), None).distill_class(data, 3, 5, 0)
    assert torch.equal(second, fresh) and info == fresh_info and torch.equal(second[:2], first)
    # another seed draws other images and crops: scored again
    rded(teacher, str(tmp_path / "scores")).distill_class(data, 3, 2, 1)
    assert teacher.calls > scored


def test_the_selection_follows_the_observer_losses(data):
    method = rded(mipc=40)
    images, info = method.distill_class(data, 5, 4, 0)
    losses = info["observer_loss"]
    assert losses == sorted(losses) and images.shape == (4, 1, 16, 16)
    kept = method._cache._memory["5:class:5|output:5"].relevance  # every candidate's kept loss
    scored = kept[method.candidates(data, 5, 0)]
    assert losses == [round(float(v), 6) for v in scored.sort().values[:4]]


def test_factor_auto_by_resolution_and_explicit(data):
    import dataclasses

    assert rded().factor_for(data) == 1  # 16 px: low resolution
    assert rded().factor_for(dataclasses.replace(data, resolution=128)) == 2
    assert rded().factor_for(dataclasses.replace(data, resolution=64)) == 1
    images, info = rded(factor=2).distill_class(data, 0, 2, 0)  # explicit: 4 patches of 8 px
    assert images.shape == (2, 1, 16, 16) and len(info["source_index"][0]) == 4
    assert all(box[2] <= 16 for image in info["crop_box"] for box in image)


def test_a_torchvision_classifier_folder_observer(data, tmp_path):
    import torchvision

    from ddapp.check_generator import folder_classifier

    torch.manual_seed(0)
    net = torchvision.models.get_model("mobilenet_v3_small", weights=None, num_classes=10)
    folder = tmp_path / "observer"
    folder.mkdir()
    torch.save(net.state_dict(), folder / "mobilenet_v3_small-0000.pth")
    method = from_schema(
        RDEDSchema,
        observer=str(folder),
        observer_space="dataset",
        classifier=folder_classifier,
        mipc=4,
        num_crop=2,
        batch_size=8,
    )
    method.validate(data, 2)
    observer = method.observer(data)
    assert observer.size == 224 and observer.channels == 3 and observer.outputs.tolist() == list(range(10))
    images, info = method.distill_class(data, 1, 2, 0)
    assert images.shape == (2, 1, 16, 16) and info["observer_loss"] == sorted(info["observer_loss"])
    with pytest.raises(UserError, match="method.observer: .*set method.observer_space=dataset") as err:
        from_schema(RDEDSchema, observer=str(folder), classifier=folder_classifier).validate(
            data, 2
        )  # digits: no wnids
    assert "\n" not in str(err.value)


# -- through the configs ---------------------------------------------------------------------------
def test_tiny_run_end_to_end_with_the_soft_label_protocol(make_cfg):
    cfg = make_cfg("method=rded", "eval.reference.enabled=false")  # the set, not the references
    assert cfg.eval._target_ == "eval.soft_label.SoftLabelProtocol"  # RDED's protocol by default
    method = build(cfg.method)
    data = build(cfg.dataset)
    assert method.teacher.cache_path(data) == build(cfg.eval.teacher).cache_path(data)  # one teacher
    metrics = build(cfg.task)(cfg)
    out = Path(cfg.paths.output_dir) / "distilled"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "rded" and metrics["distill/images"] == 10 * cfg.ipc
    assert_students_scored(metrics, len(data.test))
    assert len(list(Path(cfg.paths.cache_dir, "rded").rglob("*.pt"))) == 10  # one score file a class


WNIDS = ["n04540053", "n02124075", "n04067472"]  # wnids.txt order: labels 0, 1, 2 (not sorted)
GREY = {"n04540053": 200, "n02124075": 40, "n04067472": 120}


def grey_tiny_imagenet(root: Path, per_class: int = 6) -> Path:
    """A Tiny-ImageNet tree whose classes are single grey levels, listed out of sorted order."""
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (root / "words.txt").write_text("".join(f"{w}\tclass {w}\n" for w in WNIDS))
    rows = []
    for i, wnid in enumerate(WNIDS):
        pixels = np.full((20, 20, 3), GREY[wnid], dtype=np.uint8)
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for j in range(per_class):
            Image.fromarray(pixels).save(folder / f"{wnid}_{j}.JPEG", format="PNG")
        (root / "val" / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "val" / "images" / f"val_{i}.JPEG", format="PNG")
        rows.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t10\t10")
    (root / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")
    return root


def test_class_folders_read_back_by_task_evaluate_in_label_order(make_cfg, tmp_path, monkeypatch):
    """RDED's most reported failure is a class order that differs between the synthesis and the
    evaluation; here class ids do not sort like labels and the set still reads back right."""

    root = grey_tiny_imagenet(tmp_path / "tiny-imagenet-200")
    dataset = ["dataset=tinyimagenet", f"dataset.root={root}", "dataset.resolution=16"]
    cfg = make_cfg("task=distill", "method=rded", "method.mipc=4", "ipc=2", *dataset)
    build(cfg.task)(cfg)
    folder = Path(cfg.paths.output_dir) / "distilled"
    for wnid in WNIDS:  # each class folder holds its own class's grey
        pngs = sorted((folder / wnid).glob("*.png"))
        assert len(pngs) == 2 and all(
            np.asarray(Image.open(p)).mean() == pytest.approx(GREY[wnid], abs=1) for p in pngs
        )

    metrics, distilled, data = evaluate_folder(make_cfg, monkeypatch, folder, tmp_path / "evaluate", *dataset)
    assert data.class_ids == WNIDS and metrics["method"] == "rded"
    assert distilled.labels.tolist() == [0, 0, 1, 1, 2, 2]
    for label, wnid in enumerate(WNIDS):
        grey = distilled.images[distilled.labels == label].float().mean()
        assert grey == pytest.approx(GREY[wnid], abs=1)


# -- bad settings: one line, before any work -------------------------------------------------------
def test_bad_settings_are_one_line_errors_before_any_work(data, tmp_path):
    teacher = CountedTeacher()
    cases = [
        (lambda: rded(teacher=teacher, mipc=3, num_crop=2).validate(data, 1), None),  # fits: 1 x 1 <= 3
        (
            lambda: rded(teacher=teacher, mipc=3, factor=2).validate(data, 1),
            r"ipc=1 with method.factor=2 stitches ipc x factor\^2 = 4 crops per class but only 3 ",
        ),
        (lambda: rded(teacher=teacher, mipc=300).validate(data, 200), "but only 131 are candidates"),
        (
            lambda: from_schema(RDEDSchema, observer=str(tmp_path / "none")).validate(data, 1),
            "method.observer=.*no such folder",
        ),
        (
            lambda: from_schema(RDEDSchema).validate(data, 1),
            "method.observer=teacher uses the soft-label teacher",
        ),
    ]
    for make, message in cases:
        if message is None:
            make()
            continue
        with pytest.raises(UserError, match=message) as err:
            make()
        assert "\n" not in str(err.value)
    assert teacher.calls == 0  # nothing scored


def test_config_checks_name_the_setting(make_cfg):
    from ddapp.config_checks import check_config

    for override, message in [
        ("method.num_crop=0", "method.num_crop must be >= 1"),
        ("method.factor=0", "method.factor must be auto or an integer >= 1"),
        ("method.factor=two", "method.factor must be auto or an integer >= 1"),
        ("method.scale=[0.0,1.0]", "method.scale must be \\[low, high\\] with 0 < low <= high <= 1"),
        ("method.scale=[0.5,0.2]", "method.scale must be"),
        ("method.observer_space=imagenet", "method.observer_space must be one of"),
    ]:
        with pytest.raises(UserError, match=message):
            check_config(make_cfg("method=rded", override))
    check_config(make_cfg("method=rded", "method.factor=2"))

"""Folder, ImageNet-subset, Tiny ImageNet and CIFAR datasets on tiny trees built in tmp_path."""

import io
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import ddcore  # noqa: F401  (torchvision import fix before anything else)
from ddcore.data.cifar import cifar10, cifar100
from ddcore.data.classes import subset_wnids
from ddcore.data.folders import image_folder, imagenet_subset, tinyimagenet
from ddcore.errors import UserError

CONF = Path(__file__).resolve().parents[1] / "conf" / "dataset"
EXTRA_WNID = "n01443537"  # goldfish: in ImageNet-1k, not in ImageNette


def image_bytes(fmt: str, size=(12, 10), color=(200, 30, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


PNG, JPEG = image_bytes("PNG"), image_bytes("JPEG")


def write_images(folder: Path, names, data: bytes = JPEG) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(data)


def assert_images(images: torch.Tensor, n: int, channels: int, resolution: int) -> None:
    assert images.shape == (n, channels, resolution, resolution)
    assert images.dtype == torch.float32
    assert 0.0 <= images.min() and images.max() <= 1.0


# ----------------------------------------------------------------------------- image_folder


@pytest.fixture
def folder_tree(tmp_path):
    write_images(tmp_path / "train" / "sea_lion", ["a.png", "b.PNG"], PNG)
    write_images(tmp_path / "train" / "cat", ["a.jpg", "b.jpeg", "c.JPEG", "notes.txt"])
    write_images(tmp_path / "val" / "cat", ["v.webp"], image_bytes("WEBP"))
    write_images(tmp_path / "val" / "sea_lion", ["v.bmp"], image_bytes("BMP"))
    return tmp_path


def test_image_folder_loads_sorted_classes(folder_tree):
    data = image_folder(str(folder_tree), resolution=8)
    assert data.class_ids == ["cat", "sea_lion"]
    assert data.class_names == ["cat", "sea lion"]
    assert len(data.train) == 5 and len(data.test) == 2  # notes.txt is not an image
    assert data.class_indices(0).tolist() == [0, 1, 2]
    assert data.class_indices(1).tolist() == [3, 4]
    assert_images(data.class_images(1), 2, 3, 8)
    assert_images(data.test.load([0, 1]), 2, 3, 8)
    assert data.test.labels.tolist() == [0, 1]


def test_image_folder_grayscale_and_test_dir(folder_tree):
    (folder_tree / "val").rename(folder_tree / "test")
    data = image_folder(str(folder_tree), resolution=6, channels=1)
    assert_images(data.train.load([0]), 1, 1, 6)
    assert "test" in data.description


def test_image_folder_errors(tmp_path, folder_tree):
    with pytest.raises(UserError, match="image folder not found.*dataset.root"):
        image_folder(str(tmp_path / "nowhere"))
    (folder_tree / "val" / "dog").mkdir()
    (folder_tree / "val" / "dog" / "x.png").write_bytes(PNG)
    with pytest.raises(UserError, match=r"in .*val are not in .*train, first 'dog'"):
        image_folder(str(folder_tree))
    (folder_tree / "train" / "dog").mkdir()
    with pytest.raises(UserError, match=r"class folder has no images: .*train/dog"):
        image_folder(str(folder_tree))


def test_image_folder_missing_splits(tmp_path):
    write_images(tmp_path / "val" / "cat", ["a.png"], PNG)
    with pytest.raises(UserError, match="train split not found"):
        image_folder(str(tmp_path))
    write_images(tmp_path / "train" / "cat", ["a.png"], PNG)
    (tmp_path / "val").rename(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="no validation split.*val/<class>/ or .*test/<class>/"):
        image_folder(str(tmp_path))


# ----------------------------------------------------------------------------- ImageNet subsets


def imagenet_tree(root: Path, wnids, n_train=2, n_val=1) -> Path:
    for wnid in wnids:
        write_images(root / "train" / wnid, [f"{wnid}_{i}.JPEG" for i in range(n_train)])
        write_images(root / "val" / wnid, [f"ILSVRC2012_val_{wnid}_{i}.JPEG" for i in range(n_val)])
    return root


@pytest.fixture
def full_tree(tmp_path):
    return imagenet_tree(tmp_path / "imagenet", subset_wnids("imagenette") + [EXTRA_WNID])


@pytest.fixture
def subset_only_tree(tmp_path):
    return imagenet_tree(tmp_path / "imagenette2", subset_wnids("imagenette"))


def test_imagenette_full_tree(full_tree, caplog):
    with caplog.at_level(logging.INFO, logger="ddcore.data.folders"):
        data = imagenet_subset("imagenette", str(full_tree), resolution=16)
    assert data.name == "imagenette" and data.num_classes == 10
    assert data.class_ids[0] == "n01440764" and data.class_names[0] == "tench"
    assert data.prompts[0] == "tench, Tinca tinca"
    assert len(data.train) == 20 and len(data.test) == 10
    assert EXTRA_WNID not in {p.parent.name for p in data.train.paths}
    first = data.class_indices(0).tolist()
    assert first == [0, 1] and {data.train.paths[i].parent.name for i in first} == {"n01440764"}
    assert data.class_indices(9, "test").tolist() == [9]
    assert_images(data.class_images(3), 2, 3, 16)
    assert "full ImageNet tree" in data.description
    assert "full ImageNet tree" in caplog.text and "not comparable" not in caplog.text


def test_first_classes_keeps_the_first_wnids_of_the_list_and_says_so(full_tree):
    """``+dataset.first_classes=2``: real image sizes, two classes (rehearsals, smoke tests)."""
    data = imagenet_subset("imagenette", str(full_tree), resolution=16, first_classes=2)
    assert data.class_ids == subset_wnids("imagenette")[:2] and data.name == "imagenette-first2"
    assert len(data.train) == 4 and data.test.labels.tolist() == [0, 1]
    for bad in (1, 11):  # one class is no classification task
        with pytest.raises(UserError, match=f"first_classes={bad} must lie in 2..10"):
            imagenet_subset("imagenette", str(full_tree), resolution=16, first_classes=bad)


def test_imagenette_subset_only_download_warns(subset_only_tree, caplog):
    with caplog.at_level(logging.INFO, logger="ddcore.data.folders"):
        data = imagenet_subset("imagenette", str(subset_only_tree), resolution=8)
    assert "subset-only download" in data.description
    assert "not comparable" in data.description
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "imagenette2" in warnings[0].getMessage()


def test_imagenet1k_with_its_own_folders_is_full(tmp_path):
    root = imagenet_tree(tmp_path / "imagenet", subset_wnids("imagenet1k"), n_train=1, n_val=1)
    data = imagenet_subset("imagenet1k", str(root), resolution=4)
    assert data.num_classes == 1000 and len(data.train) == 1000
    assert "full ImageNet tree" in data.description


def test_imagenet_missing_train_folder(tmp_path):
    with pytest.raises(UserError) as err:
        imagenet_subset("imagenette", str(tmp_path / "imagenet"))
    message = str(err.value)
    assert message.startswith(f"ImageNet train folder not found: {tmp_path / 'imagenet' / 'train'}")
    assert "paths.data_dir/imagenet" in message and "DD_DATA_DIR" in message
    assert "dataset.root=<dir>" in message


def test_imagenet_missing_wnid_folders(full_tree):
    with pytest.raises(UserError, match="989 of 1000 imagenet1k class folders missing .* first n01484850"):
        imagenet_subset("imagenet1k", str(full_tree))
    for path in (full_tree / "val" / "n03000684").iterdir():
        path.unlink()
    (full_tree / "val" / "n03000684").rmdir()
    with pytest.raises(
        UserError,
        match=r"1 of 10 imagenette class folders missing in .*val, "
        "first n03000684",
    ):
        imagenet_subset("imagenette", str(full_tree))


def test_imagenet_val_must_be_in_wnid_folders(tmp_path):
    root = imagenet_tree(tmp_path / "imagenet", subset_wnids("imagenette"), n_val=0)
    for wnid in subset_wnids("imagenette"):
        (root / "val" / wnid).rmdir()
    write_images(root / "val", ["ILSVRC2012_val_00000001.JPEG"])
    with pytest.raises(
        UserError,
        match="val images are not in wnid folders.*sort them into "
        r"val/<wnid>/",
    ):
        imagenet_subset("imagenette", str(root))
    write_images(root / "val" / "n01440764", [])  # once sorted in part, missing wnids are named
    with pytest.raises(
        UserError,
        match=r"9 of 10 imagenette class folders missing in .*val, first "
        "n02102040",
    ):
        imagenet_subset("imagenette", str(root))


def test_imagenet_empty_class_folder_and_unknown_subset(full_tree):
    (full_tree / "train" / "n01440764" / "n01440764_0.JPEG").unlink()
    (full_tree / "train" / "n01440764" / "n01440764_1.JPEG").unlink()
    with pytest.raises(UserError, match=r"class folder has no images: .*train/n01440764"):
        imagenet_subset("imagenette", str(full_tree))
    with pytest.raises(UserError, match="unknown ImageNet subset 'imagenet_z'.*dataset.subset"):
        imagenet_subset("imagenet_z", str(full_tree))


# ----------------------------------------------------------------------------- Tiny ImageNet

TINY_WNIDS = ["n02124075", "n04067472", "n04540053"]


@pytest.fixture
def tiny_tree(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    (root / "words.txt").write_text(
        "n00001740\tentity\nn02124075\tEgyptian cat\nn04067472\treel\nn04540053\tvolleyball, ball\n"
    )
    rows = []
    for i, wnid in enumerate(TINY_WNIDS):
        write_images(root / "train" / wnid / "images", [f"{wnid}_0.JPEG", f"{wnid}_1.JPEG"])
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        rows.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t10\t10")
    write_images(root / "val" / "images", [f"val_{i}.JPEG" for i in range(3)])
    (root / "val" / "val_annotations.txt").write_text("\n".join(reversed(rows)) + "\n")
    return root


def test_tinyimagenet_loads_in_wnids_order(tiny_tree):
    data = tinyimagenet(str(tiny_tree), resolution=8)
    assert data.class_ids == TINY_WNIDS
    assert data.class_names == ["Egyptian cat", "reel", "volleyball"]
    assert data.prompts[2] == "volleyball, ball"
    assert data.train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert data.test.labels.tolist() == [2, 1, 0]
    assert data.test.paths[0].name == "val_2.JPEG"
    assert_images(data.test.load([0, 1, 2]), 3, 3, 8)


def test_tinyimagenet_errors(tmp_path, tiny_tree):
    with pytest.raises(UserError, match="Tiny ImageNet folder not found.*tiny-imagenet-200.zip"):
        tinyimagenet(str(tmp_path / "missing"))
    (tiny_tree / "val" / "val_annotations.txt").unlink()
    with pytest.raises(UserError, match="Tiny ImageNet val labels not found.*val_annotations.txt"):
        tinyimagenet(str(tiny_tree))
    (tiny_tree / "wnids.txt").unlink()
    with pytest.raises(UserError, match="Tiny ImageNet wnids.txt not found"):
        tinyimagenet(str(tiny_tree))


# ----------------------------------------------------------------------------- CIFAR


def write_pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def cifar_batch(label_key: bytes, labels) -> dict:
    rng = np.random.default_rng(len(labels))
    data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    return {b"data": data, label_key: list(labels), b"batch_label": b"fake"}


@pytest.fixture
def cifar10_dir(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    write_pickle(root / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    for i in range(1, 6):
        write_pickle(root / f"data_batch_{i}", cifar_batch(b"labels", [i, i + 1, 0]))
    write_pickle(root / "test_batch", cifar_batch(b"labels", [9, 3]))
    return root


@pytest.fixture
def cifar100_dir(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    names = [f"class_{i}".encode() for i in range(99)] + [b"aquarium_fish"]
    write_pickle(root / "meta", {b"fine_label_names": names, b"coarse_label_names": []})
    write_pickle(root / "train", cifar_batch(b"fine_labels", [99, 5, 99, 0]))
    write_pickle(root / "test", cifar_batch(b"fine_labels", [1]))
    return root


def test_cifar10_loads(cifar10_dir):
    data = cifar10(str(cifar10_dir))
    assert data.num_classes == 10 and data.class_ids[1] == "automobile"
    assert len(data.train) == 15 and len(data.test) == 2
    assert data.train.labels[:3].tolist() == [1, 2, 0]
    assert data.class_indices(0).tolist() == [2, 5, 8, 11, 14]
    images = data.train.load([0])
    assert_images(images, 1, 3, 32)
    first_row = pickle.loads((cifar10_dir / "data_batch_1").read_bytes())[b"data"][0]
    assert torch.equal(images[0], torch.from_numpy(first_row).view(3, 32, 32).float() / 255.0)


def test_cifar100_loads_and_resizes(cifar100_dir):
    data = cifar100(str(cifar100_dir), resolution=16)
    assert data.num_classes == 100
    assert data.class_ids[99] == "aquarium_fish" and data.class_names[99] == "aquarium fish"
    assert data.class_indices(99).tolist() == [0, 2]
    assert_images(data.class_images(99), 2, 3, 16)
    assert_images(data.test.load([0]), 1, 3, 16)


def test_cifar_errors(tmp_path, cifar10_dir, cifar100_dir):
    with pytest.raises(UserError, match="CIFAR-10 folder not found.*cifar-10-python.tar.gz"):
        cifar10(str(tmp_path / "nothing"))
    (cifar10_dir / "data_batch_3").unlink()
    with pytest.raises(UserError, match=r"CIFAR-10 file missing: .*data_batch_3 \(download"):
        cifar10(str(cifar10_dir))
    (cifar100_dir / "test").unlink()
    with pytest.raises(UserError, match="CIFAR-100 file missing: .*test.*cifar-100-python.tar.gz"):
        cifar100(str(cifar100_dir))
    write_pickle(cifar100_dir / "test", {b"data": np.zeros((1, 3072), np.uint8)})
    with pytest.raises(UserError, match="not a CIFAR-100 pickle: no 'fine_labels' entry"):
        cifar100(str(cifar100_dir))


class WritesMarker:
    """Unpickled by ``pickle.load``, this creates ``path``: what a crafted file could run."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_cifar_reads_python2_pickles(cifar10_dir):
    """The real files: protocol 2, arrays under numpy 1's ``numpy.core`` names, bytes as str."""
    batch = cifar_batch(b"labels", [4, 2])
    raw = pickle.dumps(batch, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in raw
    (cifar10_dir / "test_batch").write_bytes(raw)
    data = cifar10(str(cifar10_dir))
    assert data.test.labels.tolist() == [4, 2]
    assert torch.equal(data.test.load_uint8([1])[0].flatten(), torch.from_numpy(batch[b"data"][1]))


def test_a_crafted_cifar_pickle_is_refused_and_never_run(tmp_path, cifar10_dir):
    marker = tmp_path / "marker"
    write_pickle(cifar10_dir / "batches.meta", {b"label_names": [WritesMarker(marker)]})
    with pytest.raises(
        UserError, match=r"batches.meta is not a CIFAR-10 data file .*names io.open.*nothing in it was run"
    ):
        cifar10(str(cifar10_dir))
    assert not marker.exists()


def test_a_truncated_or_malformed_cifar_pickle_is_one_line(cifar10_dir):
    whole = (cifar10_dir / "data_batch_2").read_bytes()
    (cifar10_dir / "data_batch_2").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UserError, match="data_batch_2 is not a CIFAR-10 data file"):
        cifar10(str(cifar10_dir))
    write_pickle(cifar10_dir / "data_batch_2", [1, 2])
    with pytest.raises(UserError, match="data_batch_2 is not a CIFAR-10 pickle: it holds a list"):
        cifar10(str(cifar10_dir))
    write_pickle(cifar10_dir / "data_batch_2", {b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]})
    with pytest.raises(UserError, match="data_batch_2 is not a CIFAR-10 pickle: its data is not N rows"):
        cifar10(str(cifar10_dir))


# ----------------------------------------------------------------------------- configs


def test_dataset_configs_target_these_functions(tmp_path, cifar10_dir):
    subsets = ["imagenette", "imagewoof", "imageidc", "imagenet100", "imagenet1k"] + [
        f"imagenet_{x}" for x in "abcde"
    ]
    for subset in subsets:
        cfg = OmegaConf.load(CONF / f"{subset}.yaml")
        assert cfg._target_ == "ddcore.data.folders.imagenet_subset" and cfg.subset == subset
        assert OmegaConf.to_container(cfg)["root"] == "${paths.data_dir}/imagenet"
    assert OmegaConf.is_missing(OmegaConf.load(CONF / "image_folder.yaml"), "root")
    cfg = OmegaConf.load(CONF / "cifar10.yaml")
    cfg = OmegaConf.merge({"paths": {"data_dir": str(tmp_path)}}, {"dataset": cfg})
    from hydra.utils import instantiate

    assert instantiate(cfg.dataset).name == "cifar10"

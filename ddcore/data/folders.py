"""Datasets read from folders of image files: any class-per-folder tree, ImageNet subsets by wnid,
and Tiny ImageNet. Files are decoded on demand (FileSource), so ImageNet never sits in memory.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from ddcore.data.base import MAX_PIXELS, FileSource, ImageClassificationData, open_image, require_dir
from ddcore.data.classes import subset_wnids, wnid_names
from ddcore.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})

IMAGENET_HINT = (
    "put ImageNet's train/ and val/ wnid folders under paths.data_dir/imagenet, "
    "set DD_DATA_DIR, or dataset.root=<dir>"
)
TINY_HINT = (
    "download tiny-imagenet-200.zip from http://cs231n.stanford.edu and unzip it under "
    "paths.data_dir, or set dataset.root=<dir>"
)


# ----------------------------------------------------------------------------- folder scanning


def shown(path: str | Path) -> str:
    """A path as text that prints and logs anywhere: bytes that are not UTF-8 as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _checked(entry: os.DirEntry) -> os.DirEntry:
    """The entry, unless its name is not UTF-8: such a name cannot be a class id, a folder of
    the distilled set or a line of a log, so it is refused rather than read."""
    if not entry.name.isascii():
        try:
            entry.name.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError(
                f"name is not valid UTF-8: {shown(entry.path)} (rename it, e.g. with convmv)"
            ) from None
    return entry


def _is(entry: os.DirEntry, kind: str) -> bool:
    """``entry.is_dir()`` / ``is_file()`` (through symlinks); a link that cannot be followed (a
    loop, a cut) is one line naming it instead of an OSError."""
    try:
        return entry.is_dir() if kind == "dir" else entry.is_file()
    except OSError as exc:
        why = exc.strerror or exc
        raise UserError(
            f"cannot follow {shown(entry.path)}: {why} (remove the link or point it at a {kind})"
        ) from None


def _visible_entries(folder: Path) -> list[os.DirEntry]:
    # os.scandir, not Path.iterdir + stat: an ImageNet train folder holds 1.28M files.
    with os.scandir(folder) as entries:
        return [e for e in entries if not e.name.startswith(".")]


def subfolders(folder: Path) -> list[str]:
    """Sorted names of the (non-hidden) folders inside ``folder``."""
    return sorted(_checked(e).name for e in _visible_entries(folder) if _is(e, "dir"))


def image_files(folder: Path) -> list[Path]:
    """Sorted image files directly inside ``folder`` (extension match is case-insensitive); an
    empty (0-byte) one is refused here, at scan time, before any work."""
    return sorted(
        Path(_not_empty(_checked(e)).path)
        for e in _visible_entries(folder)
        if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and _is(e, "file")
    )


def _not_empty(entry: os.DirEntry) -> os.DirEntry:
    # one stat per file (the content digest stats every file too): cheap even for 1.28M files
    if entry.stat().st_size == 0:
        raise UserError(f"image file is empty (0 bytes): {shown(entry.path)} (remove or replace the file)")
    return entry


HEADER_SAMPLE = 1000  # train files whose header is read before any work (evenly spread)


def check_headers(source, limit: int = HEADER_SAMPLE) -> None:
    """Open (header only, no decoding) up to ``limit`` files of a file source spread evenly over
    it, every file of a smaller one: a file that is not an image fails before distillation.
    A sample, not all: reading 1.28M headers would cost minutes; a bad file outside the sample
    is still one line, when it is decoded (``load_image_file``)."""
    paths = getattr(source, "paths", None)
    if not paths:
        return
    step = max(1, len(paths) // limit)
    for path in paths[::step][:limit]:
        try:
            open_image(path, source.max_pixels).close()
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001  (PIL raises many kinds for a bad header)
            raise UserError(f"cannot read image {shown(path)}: {exc} (remove or replace the file)") from None


def pixel_limit(max_pixels) -> int | None:
    """``dataset.max_pixels`` checked: a positive integer, or None for no limit."""
    if max_pixels is None:
        return None
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise UserError(f"dataset.max_pixels must be a positive integer or null, got {max_pixels!r}")
    return max_pixels


def _class_images(folder: Path) -> list[Path]:
    files = image_files(folder)
    if not files:
        raise UserError(
            f"class folder has no images: {folder} (add "
            f"{'/'.join(sorted(e[1:] for e in IMAGE_EXTENSIONS))} files or remove it)"
        )
    return files


def scan_class_folders(
    split_dir: Path, folders: Sequence[str], label_of: dict[str, int]
) -> tuple[list[Path], list[int]]:
    """Paths and labels of the images in ``split_dir/<folder>/``, labels from ``label_of``."""
    paths, labels = [], []
    for name in folders:
        files = _class_images(split_dir / name)
        paths += files
        labels += [label_of[name]] * len(files)
    return paths, labels


def _labels_by_position(names: Sequence[str]) -> dict[str, int]:
    return {name: i for i, name in enumerate(names)}


# ----------------------------------------------------------------------------- any image folder


def _find_val_dir(root: Path, val_dirs: Sequence[str]) -> Path:
    for name in val_dirs:
        if (root / name).is_dir():
            return root / name
    looked = " or ".join(f"{root / name}/<class>/" for name in val_dirs)
    raise UserError(
        f"image folder has no validation split: expected {looked} "
        f"(add one with the same class folders as train/)"
    )


def image_folder(
    root: str,
    resolution: int = 64,
    channels: int = 3,
    val_dirs: Sequence[str] = ("val", "test"),
    max_pixels: int | None = MAX_PIXELS,
) -> ImageClassificationData:
    """Any ``root/{train,val}/<class>/*`` tree; classes = sorted train folder names.

    Untrusted trees are read safely: a file over ``max_pixels`` pixels (default PIL's own
    decompression-bomb threshold, 178,956,970; None = no limit) is refused before it is decoded,
    and a file or class name that is not UTF-8, or a link that cannot be followed, is one
    ``UserError`` line naming it (docs/reliability.md)."""
    max_pixels = pixel_limit(max_pixels)
    root = require_dir(
        Path(root),
        "image folder",
        "set dataset.root=<dir> to a folder holding train/<class>/ and val/<class>/",
    )
    train_dir = require_dir(
        root / "train", "image folder train split", "put one folder of images per class under train/"
    )
    val_dir = _find_val_dir(root, val_dirs)
    classes = subfolders(train_dir)
    if not classes:
        raise UserError(f"no class folders in {train_dir} (put one folder of images per class there)")
    val_classes = subfolders(val_dir)
    unknown = [c for c in val_classes if c not in classes]
    if unknown:
        raise UserError(
            f"{len(unknown)} class folder(s) in {val_dir} are not in {train_dir}, "
            f"first {unknown[0]!r} (rename or remove them; train/ defines the classes)"
        )
    label_of = _labels_by_position(classes)
    train = FileSource(*scan_class_folders(train_dir, classes, label_of), resolution, channels, max_pixels)
    test = FileSource(*scan_class_folders(val_dir, val_classes, label_of), resolution, channels, max_pixels)
    return ImageClassificationData(
        name="image_folder",
        class_ids=list(classes),
        class_names=[c.replace("_", " ") for c in classes],
        resolution=resolution,
        channels=channels,
        train=train,
        test=test,
        description=f"image folder {root}: {len(classes)} classes, {len(train)} train / "
        f"{len(test)} {val_dir.name} images at {resolution}px",
    )


# ----------------------------------------------------------------------------- ImageNet subsets


def _subset_wnids(subset: str) -> list[str]:
    try:
        return subset_wnids(subset)
    except ValueError as exc:
        raise UserError(f"{exc} (set dataset.subset to one of them)") from exc


def _require_wnid_folders(split_dir: Path, present: Sequence[str], wnids: Sequence[str], subset: str) -> None:
    have = set(present)
    missing = [w for w in wnids if w not in have]
    if missing:
        raise UserError(
            f"{len(missing)} of {len(wnids)} {subset} class folders missing in "
            f"{split_dir}, first {missing[0]} ({IMAGENET_HINT})"
        )


def _require_sorted_val(val_dir: Path, val_folders: Sequence[str]) -> None:
    """ImageNet's val/ ships flat (50000 files + a label file); we need it in wnid folders."""
    if not val_folders and image_files(val_dir):
        raise UserError(
            f"ImageNet val images are not in wnid folders: {val_dir} (sort them into "
            f"val/<wnid>/ folders, e.g. with the widely used valprep.sh)"
        )


def _is_full_imagenet(train_folders: Sequence[str], wnids: Sequence[str], subset: str) -> bool:
    # A subset-only download (fast.ai's imagenette2) has exactly the subset's folders; a full
    # tree has more. ImageNet-1k *is* the full tree, so its 1000 folders count as full.
    return subset == "imagenet1k" or len(train_folders) > len(wnids)


def _describe_layout(full: bool, subset: str, root: Path) -> str:
    if full:
        layout = f"full ImageNet tree at {root}"
        log.info("%s: using the %s", subset, layout)
        return layout
    layout = f"subset-only download at {root} (train/ holds exactly the {subset} classes)"
    log.info("%s: using a %s", subset, layout)
    log.warning(
        "%s: a subset-only download such as fast.ai's imagenette2 holds different images "
        "from ImageNet's train/val; accuracies are not comparable with the papers'",
        subset,
    )
    return layout + "; not ImageNet's images, accuracies not comparable with the papers"


def imagenet_subset(
    subset: str,
    root: str,
    resolution: int = 224,
    first_classes: int | None = None,
    max_pixels: int | None = MAX_PIXELS,
) -> ImageClassificationData:
    """An ImageNet-family subset from ``root/{train,val}/<wnid>/*``; label i = i-th listed wnid.
    ``first_classes``: only the first N classes of the list (smoke tests and rehearsals at real
    image sizes; the name and the description say so). ``max_pixels``: as ``image_folder``."""
    wnids, max_pixels = _subset_wnids(subset), pixel_limit(max_pixels)
    if first_classes is not None:
        if not 2 <= int(first_classes) <= len(wnids):  # a classifier needs two classes
            raise UserError(f"dataset.first_classes={first_classes} must lie in 2..{len(wnids)} for {subset}")
        wnids, subset = wnids[: int(first_classes)], f"{subset}-first{int(first_classes)}"
    root = Path(root)
    train_dir = require_dir(root / "train", "ImageNet train folder", IMAGENET_HINT)
    val_dir = require_dir(root / "val", "ImageNet val folder", IMAGENET_HINT)
    train_folders, val_folders = subfolders(train_dir), subfolders(val_dir)
    _require_wnid_folders(train_dir, train_folders, wnids, subset)
    _require_sorted_val(val_dir, val_folders)
    _require_wnid_folders(val_dir, val_folders, wnids, subset)
    layout = _describe_layout(_is_full_imagenet(train_folders, wnids, subset), subset, root)
    label_of = _labels_by_position(wnids)
    train = FileSource(*scan_class_folders(train_dir, wnids, label_of), resolution, 3, max_pixels)
    test = FileSource(*scan_class_folders(val_dir, wnids, label_of), resolution, 3, max_pixels)
    names, prompts = wnid_names(wnids)
    return ImageClassificationData(
        name=subset,
        class_ids=list(wnids),
        class_names=names,
        resolution=resolution,
        channels=3,
        train=train,
        test=test,
        prompts=prompts,
        description=f"{subset}: {len(wnids)} classes, {len(train)} train / {len(test)} val images "
        f"at {resolution}px from a {layout}",
    )


# ----------------------------------------------------------------------------- Tiny ImageNet


def _require_file(path: Path, what: str, hint: str) -> Path:
    if not path.is_file():
        raise UserError(f"{what} not found: {path} ({hint})")
    return path


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start}) ({TINY_HINT})") from None
    return [line for line in text.splitlines() if line.strip()]


def _tiny_names(words_file: Path, wnids: Sequence[str]) -> tuple[list[str], list[str]]:
    """(first lemma, full lemma line) per wnid from words.txt (``wnid<TAB>lemma, lemma, ...``)."""
    lemmas = dict(line.split("\t", 1) for line in _read_lines(words_file) if "\t" in line)
    missing = [w for w in wnids if w not in lemmas]
    if missing:
        raise UserError(
            f"{len(missing)} wnids of wnids.txt have no line in {words_file}, first "
            f"{missing[0]} ({TINY_HINT})"
        )
    lines = [lemmas[w].strip() for w in wnids]
    return [line.split(",")[0].strip() for line in lines], lines


def _tiny_train(train_dir: Path, wnids: Sequence[str]) -> tuple[list[Path], list[int]]:
    paths, labels = [], []
    for label, wnid in enumerate(wnids):
        folder = require_dir(train_dir / wnid / "images", "Tiny ImageNet class folder", TINY_HINT)
        files = _class_images(folder)
        paths += files
        labels += [label] * len(files)
    return paths, labels


def _tiny_val(val_dir: Path, label_of: dict[str, int]) -> tuple[list[Path], list[int]]:
    """Val images lie flat in val/images; val_annotations.txt gives ``file<TAB>wnid<TAB>box``."""
    annotations = _require_file(val_dir / "val_annotations.txt", "Tiny ImageNet val labels", TINY_HINT)
    paths, labels = [], []
    for line in _read_lines(annotations):
        filename, wnid = line.split("\t")[:2]
        if wnid not in label_of:
            raise UserError(f"{annotations} names wnid {wnid}, which is not in wnids.txt ({TINY_HINT})")
        paths.append(val_dir / "images" / filename)
        labels.append(label_of[wnid])
    return paths, labels


def tinyimagenet(
    root: str, resolution: int = 64, max_pixels: int | None = MAX_PIXELS
) -> ImageClassificationData:
    """Tiny ImageNet (tiny-imagenet-200): 200 classes in wnids.txt order, 64px images.
    ``max_pixels``: as ``image_folder``."""
    max_pixels = pixel_limit(max_pixels)
    root = require_dir(Path(root), "Tiny ImageNet folder", TINY_HINT)
    wnids = _read_lines(_require_file(root / "wnids.txt", "Tiny ImageNet wnids.txt", TINY_HINT))
    wnids = [w.strip() for w in wnids]
    names, prompts = _tiny_names(
        _require_file(root / "words.txt", "Tiny ImageNet words.txt", TINY_HINT), wnids
    )
    train_dir = require_dir(root / "train", "Tiny ImageNet train folder", TINY_HINT)
    val_dir = require_dir(root / "val", "Tiny ImageNet val folder", TINY_HINT)
    train = FileSource(*_tiny_train(train_dir, wnids), resolution, 3, max_pixels)
    test = FileSource(*_tiny_val(val_dir, _labels_by_position(wnids)), resolution, 3, max_pixels)
    return ImageClassificationData(
        name="tinyimagenet",
        class_ids=wnids,
        class_names=names,
        resolution=resolution,
        channels=3,
        train=train,
        test=test,
        prompts=prompts,
        description=f"Tiny ImageNet from {root}: {len(wnids)} classes, {len(train)} train / "
        f"{len(test)} val images at {resolution}px",
    )

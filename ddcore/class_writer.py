"""The distilled folder, one class at a time, so that a killed run can be resumed.

Layout under ``<run>/distilled``:

    <class_id>/<i:06d>.png       each PNG written to a hidden temp name, then ``os.replace``d
    .modes/<class_id>.pt         the class's modes, for methods that find them (before the marker)
    .done/<class_id>.json        the class's marker: its files and per-image info, written last
    manifest.json                assembled from the markers once every class is done

A class counts as done only when its marker exists and names files that exist. A killed run
can leave PNGs without a marker, or a temp file, but never a truncated ``.png``. A rerun
rewrites such a class whole.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

from ddcore.data.base import ImageClassificationData, to_uint8
from ddcore.files import atomic_write, write_json

DONE_DIR = ".done"
MODES_DIR = ".modes"
MANIFEST = "manifest.json"


def save_png_atomic(image01: torch.Tensor, path: Path) -> None:
    """One (C, H, W) image in [0, 1] as an 8-bit PNG; the final name appears only when complete."""
    arr = to_uint8(image01).permute(1, 2, 0).numpy()
    image = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def modes_path(out_dir: Path, class_id: str) -> Path:
    return Path(out_dir) / MODES_DIR / f"{class_id}.pt"


def write_modes(out_dir: Path, data: ImageClassificationData, label: int, modes: torch.Tensor) -> None:
    """A class's modes (k-means centroids, IPC centres) as ``.modes/<class_id>.pt``."""
    tensor = modes.detach().cpu().contiguous()
    atomic_write(modes_path(out_dir, data.class_ids[label]), lambda tmp: torch.save(tensor, tmp))


def read_modes(out_dir: Path, data: ImageClassificationData) -> dict[int, torch.Tensor]:
    """label -> modes, for the classes whose modes were saved."""
    return {
        label: torch.load(modes_path(out_dir, cid), map_location="cpu", weights_only=True)
        for label, cid in enumerate(data.class_ids)
        if modes_path(out_dir, cid).is_file()
    }


def marker_path(out_dir: Path, class_id: str) -> Path:
    return Path(out_dir) / DONE_DIR / f"{class_id}.json"


def write_class(
    out_dir: Path,
    data: ImageClassificationData,
    label: int,
    images: torch.Tensor,
    info: dict | None = None,
    extra: dict | None = None,
) -> dict:
    """Write one class's PNGs, remove leftovers of an earlier attempt, then its marker.

    ``info`` maps a key to one value per image (mode ids, source indices) and goes into the
    manifest; ``extra`` (fingerprint, seconds) goes into the marker only.
    """
    out_dir, class_id = Path(out_dir), data.class_ids[label]
    class_dir = out_dir / class_id
    class_dir.mkdir(parents=True, exist_ok=True)
    marker = marker_path(out_dir, class_id)
    marker.unlink(missing_ok=True)  # the class is incomplete until the new marker is written
    entries = []
    for i, image in enumerate(images):
        name = f"{i:06d}.png"
        save_png_atomic(image, class_dir / name)
        entries.append(
            {"file": f"{class_id}/{name}", "label": label, **{k: v[i] for k, v in (info or {}).items()}}
        )
    keep = {Path(e["file"]).name for e in entries}
    for path in class_dir.iterdir():  # more images from an earlier, larger ipc; temp files
        if path.is_file() and path.name not in keep:
            path.unlink()
    marker.parent.mkdir(exist_ok=True)
    payload = {"class_id": class_id, "label": label, **(extra or {}), "images": entries}
    write_json(marker, payload)
    return payload


def read_marker(out_dir: Path, class_id: str) -> dict | None:
    """The class's marker if the class is complete (marker readable, its files present)."""
    path = marker_path(out_dir, class_id)
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not all((Path(out_dir) / e["file"]).is_file() for e in marker.get("images", [])):
        return None
    return marker


def read_markers(out_dir: Path, data: ImageClassificationData) -> dict[int, dict]:
    """label -> marker, for the complete classes."""
    markers = {}
    for label, class_id in enumerate(data.class_ids):
        marker = read_marker(out_dir, class_id)
        if marker is not None:
            markers[label] = marker
    return markers


def missing_classes(
    out_dir: Path, data: ImageClassificationData, fingerprint: dict | None = None
) -> list[int]:
    """Labels without a complete class (with a marker of this ``fingerprint``, when given)."""
    markers = read_markers(out_dir, data)
    return [
        label
        for label in range(data.num_classes)
        if label not in markers
        or (fingerprint is not None and markers[label].get("fingerprint") != fingerprint)
    ]


def write_manifest(out_dir: Path, data: ImageClassificationData, manifest_base: dict) -> dict:
    """``manifest.json`` from the markers, in label order (call once every class is done)."""
    markers = read_markers(out_dir, data)
    missing = [data.class_ids[c] for c in range(data.num_classes) if c not in markers]
    if missing:
        raise RuntimeError(f"{out_dir}: classes {missing[:5]} are not complete yet")
    images = [entry for label in range(data.num_classes) for entry in markers[label]["images"]]
    manifest = {**manifest_base, "classes": data.class_ids, "class_names": data.class_names, "images": images}
    write_json(Path(out_dir) / MANIFEST, manifest)
    return manifest

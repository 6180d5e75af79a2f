"""Untrusted files and misleading messages, unit by unit (docs/reliability.md); the same cases
run through ``run.py`` as a user would are in tests/test_reliability.py's tables."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from ddcore.errors import UserError


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", str(args[0]) if args else None)


def test_a_full_disk_names_the_file_not_its_temp_name(tmp_path, monkeypatch):
    from ddapp.config_checks import os_error_line
    from ddcore.files import write_json

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError) as error:
        write_json(tmp_path / "run" / "metrics.json", {"a": 1})
    line = os_error_line(error.value)
    assert f"cannot write: {tmp_path / 'run' / 'metrics.json'}: No space left on device" in line
    assert ".tmp" not in line and list((tmp_path / "run").iterdir()) == []  # no temp file left
    inside = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "gen-1.tmp" / "vae" / "w.bin"))
    assert f"cannot write: {tmp_path / 'gen-1'}: No space" in os_error_line(inside)


def test_a_bad_value_is_reported_under_the_key_the_user_set(make_cfg):
    from ddapp.config_checks import check_config

    with pytest.raises(UserError) as error:
        check_config(make_cfg("dataset.resolution=0"))  # generator.resolution: ${dataset.resolution}
    assert str(error.value).startswith("dataset.resolution must be >= 1")
    assert "generator.resolution" not in str(error.value)
    with pytest.raises(UserError, match=r"^generator.resolution must be >= 1"):
        check_config(make_cfg("generator=dit_xl2", "generator.resolution=0"))


# -- files a run folder or a cache holds ------------------------------------------------------
class WritesMarker:
    """Unpickled by a plain ``pickle.load``/``torch.load``, this creates ``path``."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def student_checkpoints(folder: Path, marker: Path) -> tuple[Path, Path]:
    """A crafted checkpoint (its unpickling would create ``marker``) and a truncated one."""
    import torch

    crafted, truncated = folder / "crafted.ckpt", folder / "truncated.ckpt"
    torch.save({"state_dict": {"w": WritesMarker(marker)}, "epoch": 1, "optimizer_states": []}, crafted)
    torch.save({"state_dict": {"w": torch.zeros(64)}, "epoch": 1, "optimizer_states": []}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    return crafted, truncated


def test_a_crafted_or_truncated_student_checkpoint_is_one_line_and_never_run(tmp_path):
    from eval.student_module import check_resumable

    marker = tmp_path / "marker"
    crafted, truncated = student_checkpoints(tmp_path, marker)
    for path, why in [(crafted, "objects other than tensors"), (truncated, "PytorchStreamReader failed")]:
        with pytest.raises(UserError) as error:
            check_resumable(path)
        line = str(error.value)
        assert "\n" not in line and str(path) in line and why in line, line
        assert line.endswith("(delete it to retrain that student from the start)")
    (tmp_path / "other.ckpt").write_bytes(b"")
    with pytest.raises(UserError, match="other.ckpt"):
        check_resumable(tmp_path / "other.ckpt")
    assert not marker.exists()


def test_a_crafted_teacher_checkpoint_is_one_line(tmp_path):
    import torch

    from eval.teacher import read_record

    marker = tmp_path / "marker"
    torch.save({"format": 1, "state_dict": WritesMarker(marker)}, tmp_path / "teacher.pt")
    with pytest.raises(UserError) as error:
        read_record(tmp_path / "teacher.pt")
    assert "\n" not in str(error.value) and "teacher.pt" in str(error.value)
    assert not marker.exists()


def test_a_student_record_of_another_shape_is_trained_again(tmp_path):
    from ddcore.files import short_hash
    from eval.records import StudentRecords

    records = StudentRecords(tmp_path)
    path = records.record_path("student", 0)
    path.parent.mkdir(parents=True)
    for text in [
        "[]",
        f'{{"key": "{short_hash({})}"}}',
        f'{{"key": "{short_hash({})}", "final": 1, "best": 1, "history": 3}}',
    ]:
        path.write_text(text)
        assert records.read("student", 0, {}) is None
    path.write_text(f'{{"key": "{short_hash({})}", "final": 0.5, "best": 0.6, "history": [[1, 0.5]]}}')
    assert records.read("student", 0, {}).history == [(1, 0.5)]


def test_a_full_disk_while_checkpointing_a_student_leaves_no_temp_file(tmp_path):
    from eval.student_module import ResumableCheckpoint

    class Trainer:
        current_epoch, max_epochs, is_global_zero = 0, 10, True

        def save_checkpoint(self, path):
            Path(path).write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

    callback = ResumableCheckpoint(tmp_path / "checkpoints" / "rep0.ckpt", 1, {})
    with pytest.raises(OSError):
        callback.on_train_epoch_end(Trainer(), None)
    assert list((tmp_path / "checkpoints").iterdir()) == []


# -- images ------------------------------------------------------------------------------------
def png_bomb(path: Path, side: int = 30000) -> Path:
    """A ``side`` x ``side`` 1-bit black PNG, written chunk by chunk: ~110 KB on disk, under a
    second, never a full image in memory (PIL would hold one byte per pixel: 900 MB)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows, packer = b"\0" * (1 + (side + 7) // 8) * 1000, zlib.compressobj(9)
    body = b"".join(packer.compress(rows) for _ in range(side // 1000)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )
    return path


def small_png(path: Path, size: int = 16) -> Path:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), 90, np.uint8)).save(path)
    return path


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path):
    from ddcore.data.base import load_image_file

    bomb = png_bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 200_000
    for uint8 in (False, True):
        with pytest.raises(UserError) as error:
            load_image_file(bomb, 16, 3, uint8=uint8)
        assert "bomb.png has 900,000,000 pixels, over the limit of 178,956,970" in str(error.value)
        assert "dataset.max_pixels" in str(error.value)


def test_the_pixel_limit_is_a_setting(tmp_path, monkeypatch):
    from PIL import Image

    from ddcore.data import base
    from ddcore.data.base import FileSource, load_image_file

    image = small_png(tmp_path / "x.png")
    with pytest.raises(UserError, match=r"x.png has 16x16 = 256 pixels, over the limit of 100"):
        FileSource([image], [0], 8, 3, max_pixels=100).load_uint8([0])
    assert FileSource([image], [0], 8, 3, max_pixels=256).load([0]).shape == (1, 3, 8, 8)
    # above PIL's own threshold (made small here): allowed only when the setting allows it
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    monkeypatch.setattr(base, "MAX_PIXELS", 100)
    with pytest.raises(UserError, match="over the limit of 100"):
        load_image_file(image, 8, 3, max_pixels=100)
    assert load_image_file(image, 8, 3, max_pixels=1000).shape == (3, 8, 8)
    assert load_image_file(image, 8, 3, max_pixels=None).shape == (3, 8, 8)
    assert Image.MAX_IMAGE_PIXELS == 50  # PIL's limit is put back


def test_names_that_are_not_utf8_and_link_loops_are_one_line(tmp_path):
    import os

    from ddcore.data.base import FileSource
    from ddcore.data.folders import image_folder

    for split in ("train", "val"):
        for name in ("a", "b"):
            small_png(tmp_path / split / name / "0.png")
    bad = os.fsencode(tmp_path / "train" / "a") + b"/\xff.png"
    os.rename(tmp_path / "train" / "a" / "0.png", bad)
    assert len(FileSource([os.fsdecode(bad)], [0], 8, 3).digest([0])) == 64  # hashes the bytes
    with pytest.raises(UserError, match=r"name is not valid UTF-8: .*/train/a/\\xff.png \(rename it"):
        image_folder(str(tmp_path), resolution=8)
    os.rename(bad, tmp_path / "train" / "a" / "0.png")
    os.rename(tmp_path / "val" / "b", os.fsencode(tmp_path / "val") + b"/b\xfe")
    with pytest.raises(UserError, match=r"name is not valid UTF-8: .*/val/b\\xfe "):
        image_folder(str(tmp_path), resolution=8)
    os.rename(os.fsencode(tmp_path / "val") + b"/b\xfe", tmp_path / "val" / "b")
    (tmp_path / "train" / "b" / "loop.png").symlink_to("loop.png")
    with pytest.raises(UserError, match=r"cannot follow .*/train/b/loop.png: Too many levels of symbolic"):
        image_folder(str(tmp_path), resolution=8)

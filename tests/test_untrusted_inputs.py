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

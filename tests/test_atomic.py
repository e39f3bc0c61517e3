"""specdiff.atomic: all-or-nothing writes shared by the cache, vocoder, evaluation and training files."""

from __future__ import annotations

import os
import stat

import pytest

from specdiff.atomic import atomic_write, atomic_write_text


def test_writes_creates_folders_and_uses_normal_permissions(tmp_path):
    target = tmp_path / "a" / "b" / "x.json"
    assert atomic_write_text(target, "{}\n") == target
    assert target.read_text() == "{}\n"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]


def test_failure_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")

    def half_write(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_write)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]

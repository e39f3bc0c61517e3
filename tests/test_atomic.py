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


def test_the_umask_is_never_touched(tmp_path, monkeypatch):
    """Reading the umask means changing it for a moment, which races with other threads (the server
    writes results from worker threads): the writers must leave it to the kernel."""

    def forbidden(*args):
        raise AssertionError("os.umask called")

    previous = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", forbidden)
        target = atomic_write_text(tmp_path / "x.txt", "x")
    finally:
        monkeypatch.undo()
        os.umask(previous)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # 0666 minus the umask in force


def test_fsync_and_stream_writes(tmp_path):
    from specdiff.atomic import atomic_write_stream

    target = atomic_write_stream(tmp_path / "c.bin", lambda f: f.write(b"abc"), fsync=True)
    assert target.read_bytes() == b"abc"
    assert [p.name for p in tmp_path.iterdir()] == ["c.bin"]

"""Atomic file writes: write a temporary file next to the target, then rename it over the target.

A crash or an exception never leaves a half-written file under the real name (only the previous
version, or nothing), and no temporary file is left behind on failure. Every writer of the package
(audio, PNGs, checkpoints, reports, configs, the server's results) goes through this module.

Permissions: the temporary file is created with ``os.open(..., 0o666)``, so the kernel applies the
process umask exactly as for any new file. Nothing here reads or changes the umask: reading it
takes ``os.umask`` calls that briefly change it, which would race with other threads (the server
writes results from worker threads while requests are served).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)


def create_temp(path: str | os.PathLike) -> tuple[int, Path]:
    """A new, empty hidden file next to ``path`` (``.NAME.RANDOM.tmp``): an open descriptor and its path.

    Created exclusively with mode 0666 minus the umask (the usual permissions of a new file; not
    mkstemp's 0600). The caller closes the descriptor and either renames the file (:func:`commit`)
    or deletes it.
    """
    path = Path(path)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, _CREATE_FLAGS, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file next to {path}")


def commit(tmp: str | os.PathLike, path: str | os.PathLike, fsync: bool = False) -> Path:
    """Rename the finished ``tmp`` over ``path`` (one atomic step); with ``fsync``, make the file's data
    and the rename durable first and after (for files a crash must not lose, e.g. checkpoints)."""
    path = Path(path)
    if fsync:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.replace(tmp, path)
    if fsync and os.name == "posix":
        with contextlib.suppress(OSError):  # some file systems cannot sync a folder; the rename is done
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], fsync: bool = False) -> Path:
    """Call ``write(tmp)`` on a fresh temporary path in ``path``'s folder, then rename it to ``path``.

    The folder is created if needed. ``write`` may open ``tmp`` itself or hand it to a library that
    takes a path. ``fsync``: see :func:`commit`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temp(path)
    os.close(fd)
    try:
        write(tmp)
        commit(tmp, path, fsync=fsync)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_stream(path: str | os.PathLike, write: Callable[[BinaryIO], object], fsync: bool = False) -> Path:
    """Like :func:`atomic_write`, but ``write`` gets the temporary file open for binary writing."""

    def to_file(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            write(handle)

    return atomic_write(path, to_file, fsync=fsync)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), fsync=fsync)


def atomic_write_text(path: str | os.PathLike, text: str, fsync: bool = False) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)

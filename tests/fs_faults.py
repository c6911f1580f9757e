"""File-system faults a user meets, made in this process: a read-only folder and a disk
that fills up.

A read-only folder is made for real (``chmod``) where that means something; root ignores
permission bits, so as root it is simulated the way the kernel answers: every attempt to
create, open for writing, rename or remove an entry inside it fails with ``EACCES``
(``PermissionError``), naming the path.  A full disk is simulated as write-back reports it:
``fsync`` of a file inside the folder fails with ``ENOSPC`` (headstart fsyncs everything
it writes before renaming it into place).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = ["disk_full", "read_only"]


def _inside(path: Any, folder: Path, *, strictly: bool = True) -> bool:
    if isinstance(path, int):
        return False
    try:
        p = Path(os.path.abspath(os.fsdecode(path)))
    except TypeError:
        return False
    return folder in p.parents or (not strictly and p == folder)


def _denied(path: Any) -> PermissionError:
    return PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


@contextlib.contextmanager
def read_only(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``folder`` (and what it holds) read-only for the block: ``chmod a-w`` for real when
    not root, else simulated (see the module's docstring)."""
    folder = Path(os.path.abspath(folder))
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
        for p, mode in modes.items():
            p.chmod(stat.S_IMODE(mode) & ~0o222)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(stat.S_IMODE(mode))
        return
    with monkeypatch.context() as m:
        _simulate_read_only(folder, m)
        yield


def _simulate_read_only(folder: Path, m: pytest.MonkeyPatch) -> None:
    real_open, real_os_open = builtins.open, os.open
    real_mkdir, real_replace, real_rename = os.mkdir, os.replace, os.rename
    real_unlink, real_rmdir = os.unlink, os.rmdir

    def open_(file: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
        if any(c in mode for c in "wax+") and _inside(file, folder):
            raise _denied(file)
        return real_open(file, mode, *args, **kw)

    def os_open(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        # O_TMPFILE opens the folder itself to make an unnamed file in it
        tmpfile = flags & getattr(os, "O_TMPFILE", 0) == getattr(os, "O_TMPFILE", -1)
        if (
            flags & _WRITE_FLAGS
            and kw.get("dir_fd") is None
            and _inside(path, folder, strictly=not tmpfile)
        ):
            raise _denied(path)
        return real_os_open(path, flags, *args, **kw)

    def guard(real: Callable[..., Any], strictly: bool) -> Callable[..., Any]:
        def call(*paths: Any, **kw: Any) -> Any:
            for p in paths:
                # moving the folder itself elsewhere rewrites its "..": needs write access
                if kw.get("dir_fd") is None and _inside(p, folder, strictly=strictly):
                    raise _denied(p)
            return real(*paths, **kw)

        return call

    m.setattr(builtins, "open", open_)
    m.setattr(io, "open", open_)
    m.setattr(os, "open", os_open)
    m.setattr(os, "mkdir", guard(real_mkdir, strictly=True))
    m.setattr(os, "replace", guard(real_replace, strictly=False))
    m.setattr(os, "rename", guard(real_rename, strictly=False))
    m.setattr(os, "unlink", guard(real_unlink, strictly=True))
    m.setattr(os, "rmdir", guard(real_rmdir, strictly=True))


def disk_full(
    folder: Path, monkeypatch: pytest.MonkeyPatch, *, only: Callable[[Path], bool] | None = None
) -> None:
    """From now on, ``fsync`` of a file inside ``folder`` (and passing ``only``) fails
    with ENOSPC, without a file name, as a full disk reports it."""
    folder = Path(os.path.abspath(folder))
    real_fsync = os.fsync

    def fsync(fd: Any) -> None:
        number = fd if isinstance(fd, int) else fd.fileno()
        try:
            path = Path(os.readlink(f"/proc/self/fd/{number}"))
        except OSError:
            path = None
        if path and _inside(path, folder) and not path.is_dir() and (only is None or only(path)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)

"""Atomic file writes: a reader never sees a half-written file under its final name.

And :func:`exclusive`: one writer at a time for a path, by a lock file beside it; and
:func:`writes_to`: a write that fails for a reason the user can fix (no permission, a
read-only file system, a full disk) is one :class:`~headstart.errors.StorageError` naming
the place and what to do.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shlex
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from headstart.errors import ConfigError, storage_error

__all__ = [
    "LockedError",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "current_umask",
    "exclusive",
    "fsync_dir",
    "lock_path",
    "remove_lock_if_free",
    "sha256_file",
    "writes_to",
]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success fsync it and ``os.replace`` it in.

    The temporary file lives in the same folder so the final rename is atomic.  If the
    block raises, the temporary file is removed and ``dest`` is left as it was.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates the file 0600; give it the mode a plain open() would have.
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def writes_to(
    where: str | os.PathLike[str], *, instead: str = "choose another --out"
) -> Iterator[None]:
    """Turn an ``OSError`` in the block that the user can fix (permission denied, a
    read-only file system, a full disk or quota) into a :class:`StorageError` naming
    ``where`` and ``instead`` (what else to do); anything else goes through as it is."""
    try:
        yield
    except OSError as exc:
        error = storage_error(exc, where, instead=instead)
        if error is None:
            raise
        raise error from exc


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
    # The rename itself is durable only once the directory entry is flushed.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(dest: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(dest: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(dest, text.encode("utf-8"))


def atomic_write_json(dest: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(dest, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


# -- one writer at a time ---------------------------------------------------------------


class LockedError(ConfigError):
    """Another process holds the lock on a path this one means to write."""

    def __init__(self, message: str, *, lock: Path, holder: dict[str, Any] | None) -> None:
        super().__init__(message)
        self.lock = lock
        self.holder = holder


def lock_path(target: str | os.PathLike[str]) -> Path:
    """``.NAME.lock`` beside ``target`` (its folder's real path): outside ``target``, so
    that it outlives ``target``'s replacement, and one file for every spelling of it."""
    absolute = Path(os.path.abspath(Path(target).expanduser()))
    if not absolute.name:
        raise ConfigError(f"{target}: the root folder cannot be written to")
    return absolute.parent.resolve() / f".{absolute.name}.lock"


def _holder() -> dict[str, Any]:
    first = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    # python -m PACKAGE: argv[0] is PACKAGE/__main__.py; python -c: "-c"
    name = first.parent.name if first.name == "__main__.py" else first.name
    argv = ["python" if name == "-c" else name, *sys.argv[1:]]
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": shlex.join(argv),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def describe_holder(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "a process that has not yet written who it is"
    return (
        f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
        f"{holder.get('started', '?')}: {holder.get('command', '?')}"
    )


def _read_holder(fd: int) -> dict[str, Any] | None:
    # The holder writes its record just after it takes the lock: give it a moment.
    for _ in range(20):
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(os.pread(fd, 1 << 16, 0).decode("utf-8"))
            if isinstance(record, dict):
                return record
        time.sleep(0.01)
    return None


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (a holder removes the file as it lets
    go; a lock taken on the removed file would exclude nobody)."""
    try:
        st, now = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return those created, deepest first."""
    missing = []
    for p in (folder, *folder.parents):
        if p.exists():
            break
        missing.append(p)
    folder.mkdir(parents=True, exist_ok=True)
    return missing


@contextlib.contextmanager
def exclusive(
    target: str | os.PathLike[str],
    *,
    label: str | None = None,
    instead: str = "write elsewhere",
    wait: bool = False,
    optional: bool = False,
) -> Iterator[Path | None]:
    """Hold the lock on ``target`` (:func:`lock_path`) for the block: one writer at a time.

    The lock is the kernel's ``flock`` on the lock file, so it goes with its process
    however that ends (an exception, Ctrl-C, a SIGKILL); the file itself says who holds it
    (pid, host, command, start time) and is removed on the way out.  A file that a killed
    process left behind is held by nobody and is simply taken over.

    Held by another process: raise :class:`LockedError` naming ``label`` (default: the
    path), the holder and ``instead`` (what to do); with ``wait``, wait for it.  A lock
    file that cannot be made (no ``fcntl``; with ``optional``, a folder that cannot be
    written) means going without: the block runs unlocked and gets None.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield None
        return
    path = lock_path(target)
    label = label or str(target)
    created: list[Path] = []
    try:
        created = _make_parents(path.parent)
        fd = _acquire(fcntl, path, label, instead, wait)
    except OSError as exc:
        if not optional:
            full = storage_error(exc, path.parent, instead=instead)
            if full is not None:
                raise full from exc
            raise ConfigError(
                f"{label}: cannot create the lock file {path} ({exc.strerror or exc}); is the "
                "folder writable?"
            ) from exc
        fd = -1
    if fd < 0:  # optional, and the folder cannot be written: go without
        yield None
        return
    try:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(_holder()) + "\n").encode("utf-8"), 0)
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still holding it: see _same_file
        os.close(fd)
        for folder in created:  # made only for the lock, if nothing else went there
            with contextlib.suppress(OSError):
                folder.rmdir()


def _acquire(fcntl: Any, path: Path, label: str, instead: str, wait: bool) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                if not wait:
                    raise LockedError(
                        f"{label}: another headstart process is writing it "
                        f"({describe_holder(holder)}); wait for it to finish, or {instead}",
                        lock=path,
                        holder=holder,
                    ) from None
                log.info("%s: waiting for %s", label, describe_holder(holder))
                fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # taken over a removed file: try again on the one there now


def remove_lock_if_free(path: str | os.PathLike[str]) -> bool:
    """Remove the lock file ``path`` unless a live process holds it; return whether it
    was removed (or was already gone)."""
    path = Path(path)
    try:
        import fcntl

        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return True
    except (ImportError, OSError):
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        if _same_file(fd, path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return True
    finally:
        os.close(fd)

"""The errors headstart raises on purpose.

Every error a user can cause is a :class:`HeadstartError`; the CLI turns it into one line
on stderr and a non-zero exit.  Anything else that escapes is a bug in headstart.
"""

from __future__ import annotations

import errno
import os

__all__ = [
    "ConfigError",
    "DataError",
    "HeadstartError",
    "RunError",
    "SourceError",
    "StorageError",
    "WeightsError",
    "os_problem",
    "storage_error",
]


class HeadstartError(Exception):
    """Base class: a problem the user can fix; the message says what and how."""


class ConfigError(HeadstartError, ValueError):
    """An argument or option has a value that cannot be used."""


class SourceError(ConfigError):
    """A source spec names an unknown family or model, or the model cannot be built."""


class DataError(HeadstartError):
    """A data set is missing, empty, malformed or has unreadable items."""


class WeightsError(HeadstartError):
    """Weights cannot be found, downloaded, verified or loaded."""


class RunError(HeadstartError):
    """A run directory is missing, incomplete or damaged."""


class TrainingError(HeadstartError):
    """Training diverged: a loss that is not a finite number."""


class StorageError(HeadstartError):
    """A file or folder cannot be written: no permission, a read-only file system, a full
    disk.  The message names the place and what to do."""


# What the user can fix, by errno; also found in the text of errors that libraries wrap
# an OSError in (safetensors: "No space left on device (os error 28)").
_PROBLEMS = {
    errno.ENOSPC: "the disk is full (no space left on device)",
    errno.EDQUOT: "the disk quota is used up (disk quota exceeded)",
    errno.EACCES: "no permission to write (permission denied)",
    errno.EPERM: "no permission to write (operation not permitted)",
    errno.EROFS: "the file system is read-only",
}


def os_problem(exc: BaseException) -> str | None:
    """What a write failure means for the user (``"the disk is full (no space left on
    device)"``...), or None when it is none of the conditions a user can fix."""
    code = getattr(exc, "errno", None)
    if code in _PROBLEMS:
        return _PROBLEMS[code]
    text = str(exc)
    for code, problem in _PROBLEMS.items():
        if os.strerror(code) in text or f"os error {code})" in text:
            return problem
    return None


def storage_error(
    exc: BaseException,
    where: str | os.PathLike[str] | None = None,
    *,
    instead: str = "write somewhere else",
) -> StorageError | None:
    """The one-line error for a write that failed for a reason the user can fix, naming
    ``where`` (default: the file the error names) and what to do (``instead``: "choose
    another --out"...); None for any other error (a bug: let it through)."""
    if isinstance(exc, HeadstartError):
        return None
    problem = os_problem(exc)
    if problem is None:
        return None
    place = where if where is not None else getattr(exc, "filename", None) or "?"
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or problem.startswith("the disk"):
        todo = f"free space or {instead}"
    elif problem.startswith("the file system"):
        todo = instead
    else:
        todo = f"make it writable or {instead}"
    return StorageError(f"{problem} at {place}: {todo}")

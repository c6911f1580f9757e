"""Downloads into the weights cache: streamed to ``NAME.partial``, resumed with HTTP Range,
retried with back-off, verified (the hash, or without one the file's format) and only
then moved into place; and the ``NAME.sha256.json`` stamps that say a cached file is
intact.  A cached file that fails its check is set aside and fetched again.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from headstart._io import atomic_write_json, exclusive, fsync_dir, sha256_file, writes_to
from headstart._progress import open_bar
from headstart.errors import WeightsError, storage_error
from headstart.weights.files import (
    URL_SCHEMES,
    Stamp,
    format_problem,
    read_stamp,
    set_aside,
    sidecar_path,
)

log = logging.getLogger(__name__)


PARTIAL_SUFFIX = ".partial"  # NAME.partial: a download in progress or interrupted


DOWNLOAD_ATTEMPTS = 4


_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


_TIMEOUT_S = 60.0  # per socket operation, not for the whole transfer


_CHUNK = 1 << 16


# What to do when the cache folder cannot be written (read-only, full).
CACHE_INSTEAD = "set HEADSTART_CACHE (or --cache-dir) to another folder"


def partial_path(dest: Path) -> Path:
    """``NAME.partial``: the download of ``NAME`` in progress, or interrupted."""
    return dest.with_name(dest.name + PARTIAL_SUFFIX)


def write_stamp(path: Path, sha256: str, source: str) -> Stamp:
    """Record ``path``'s size, mtime and ``sha256`` in its sidecar."""
    st = path.stat()
    stamp = Stamp(st.st_size, st.st_mtime_ns, sha256, source)
    try:
        atomic_write_json(sidecar_path(path), asdict(stamp))
    except OSError as exc:  # a read-only cache still works; its files are hashed each time
        log.debug("could not write %s: %s", sidecar_path(path), exc)
    return stamp


def file_sha256(path: Path) -> str:
    """``path``'s sha256: from its sidecar while size and mtime are unchanged, else hashed."""
    stamp = read_stamp(path)
    if stamp is not None and stamp.matches(path.stat()):
        return stamp.sha256
    return sha256_file(path)


@dataclass(frozen=True)
class FileCheck:
    """The verdict on one cached file."""

    path: Path
    size: int
    sha256: str | None
    problem: str | None = None  # None: good to load
    basis: str = ""  # what the hash was checked against ("" for nothing: recorded now)

    @property
    def ok(self) -> bool:
        return self.problem is None


def check_file(
    path: Path, *, expected: str | None = None, url: str | None = None, rehash: bool = False
) -> FileCheck:
    """Check a cached file before it is used; its sidecar is updated when it is good.

    Good means: not empty, whole and of its kind (:func:`~headstart.weights.files.
    format_problem`; only the cheap part while the sidecar vouches for it), and its sha256
    starts with ``expected`` when that is given, else equals the one its sidecar
    recorded.  While size and mtime match the sidecar the recorded hash is trusted,
    unless ``rehash``.  A file with nothing to check it against (put there by hand) is
    good as it is, and its hash is recorded.  With ``url``, a file the sidecar says came
    from another URL (two URLs, one file name) is not good for this one.
    """
    st = path.stat()
    stamp = read_stamp(path)

    def bad(problem: str, digest: str | None = None) -> FileCheck:
        return FileCheck(path, st.st_size, digest, problem)

    if st.st_size == 0:
        return bad("is empty")
    if expected is None and stamp is not None:
        if stamp.size != st.st_size:
            return bad(
                f"is {st.st_size} bytes but was {stamp.size} when stored (truncated or altered)"
            )
        if url is not None and stamp.source.startswith(URL_SCHEMES) and stamp.source != url:
            return bad(f"was downloaded from {stamp.source}, not from {url}")
    fresh = stamp is not None and stamp.matches(st) and not rehash
    if problem := format_problem(path, quick=fresh):
        return bad(problem.text)
    digest = stamp.sha256 if stamp is not None and fresh else sha256_file(path)
    if expected is not None:
        if not digest.startswith(expected):
            return bad(f"has sha256 {digest[:16]}..., not the expected {expected[:16]}...", digest)
        basis = "the expected sha256"
    elif stamp is not None:
        if digest != stamp.sha256:
            return bad(
                f"changed since it was stored (sha256 {digest[:16]}..., recorded "
                f"{stamp.sha256[:16]}...)",
                digest,
            )
        basis = "its recorded sha256"
    else:
        basis = ""
    if not fresh:
        write_stamp(path, digest, stamp.source if stamp else "found in the cache")
    return FileCheck(path, st.st_size, digest, None, basis)


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    for_spec: str | None = None,
    attempts: int = DOWNLOAD_ATTEMPTS,
    backoff_s: float = 1.0,
    progress: bool = True,
) -> Path:
    """Return ``dest``, a checked copy of ``url``: the cached file if it is good, else
    a fresh download.

    ``sha256`` is the file's hash or a prefix of it.  A cached file that fails its check
    (:func:`check_file`) is set aside (``NAME.bad-TIMESTAMP``) and fetched again.  The
    download goes to ``NAME.partial`` beside ``dest`` (resumed with a Range request when an
    earlier run left one), is tried ``attempts`` times with exponential back-off from
    ``backoff_s``, verified (against ``sha256``; without one, by its format: a web page or
    a cut file is never cached), fsynced and only then renamed to ``dest``.  ``for_spec`` (e.g.
    ``torchvision:resnet18``) is named in the offline message: ``headstart cache add FILE
    --for SPEC``.  Raises :class:`WeightsError` saying what to do.
    """
    dest = Path(dest)
    url = url.split("#", 1)[0]
    offline = os.environ.get("HEADSTART_OFFLINE", "").lower() in ("1", "true", "yes")
    if offline and not dest.is_file():  # before the lock: leave nothing behind
        raise _offline(url, dest, for_spec, "offline (HEADSTART_OFFLINE is set)")
    with cache_writer(dest):
        if dest.is_file():
            check = check_file(dest, expected=sha256, url=url)
            if check.ok:
                return dest
            try:
                aside = set_aside(dest)
            except OSError as exc:
                raise WeightsError(
                    f"{dest} {check.problem}; cannot move it aside ({exc.strerror or exc}): "
                    "delete it, then run again"
                ) from exc
            log.warning(
                "%s %s; set aside as %s, fetching it again from %s",
                dest,
                check.problem,
                aside.name,
                url,
            )
        if offline:
            raise _offline(url, dest, for_spec, "offline (HEADSTART_OFFLINE is set)")
        fetch = _Fetch(url, dest, for_spec, attempts, backoff_s, progress)
        resumed = fetch.run()
        digest, problem = _verify(fetch.partial, dest.name, sha256)
        if problem and resumed:
            # The part an earlier run left may be stale or damaged (a crash can leave
            # zeros in a file's last blocks): one more try, from the first byte.
            log.warning("%s: the resumed download %s; starting over", url, problem)
            fetch.discard_partial()
            fetch.run()
            digest, problem = _verify(fetch.partial, dest.name, sha256)
        if problem:
            fetch.discard_partial()
            raise WeightsError(
                f"{url}: {problem}; nothing was cached; check the URL"
                + (" and the hash" if sha256 else "")
            )
        os.replace(fetch.partial, dest)
        fsync_dir(dest.parent)
        fetch.meta.unlink(missing_ok=True)
        write_stamp(dest, digest, url)
    return dest


def _verify(path: Path, name: str, sha256: str | None) -> tuple[str, str | None]:
    """The sha256 of a finished download of ``name``, and what is wrong with it (None:
    nothing).  A matching hash settles it; without one, the file's format has to."""
    digest = sha256_file(path)
    if sha256 and digest.startswith(sha256):
        return digest, None
    problem = format_problem(path, name=name)
    if problem is not None and problem.page:
        return digest, f"the server sent a web page, not weights ({problem.page})"
    if sha256:
        return digest, f"the downloaded file has sha256 {digest}, not {sha256}"
    return digest, None if problem is None else f"the downloaded file {problem}"


class _Interrupted(OSError):
    """A transfer that ended early; tried again."""


@dataclass
class _Fetch:
    """Bring ``url`` into ``NAME.partial`` beside ``dest``, resuming what is there.

    Written by hand on urllib rather than ``torch.hub.download_url_to_file``, which
    cannot resume: a large file cut at 95% would otherwise start again from zero.
    """

    url: str
    dest: Path
    for_spec: str | None
    attempts: int
    backoff_s: float
    progress: bool

    @property
    def partial(self) -> Path:
        return partial_path(self.dest)

    @property
    def meta(self) -> Path:
        """``NAME.partial.json``: the URL and version the part belongs to."""
        return self.partial.with_name(self.partial.name + ".json")

    def discard_partial(self) -> None:
        for p in (self.partial, self.meta):
            p.unlink(missing_ok=True)

    def run(self) -> bool:
        """Complete ``NAME.partial``, trying again after interruptions; return whether
        it started from a part an earlier run left."""
        resumed = self.partial.is_file() and self.partial.stat().st_size > 0
        for attempt in range(1, self.attempts + 1):
            try:
                self._transfer()
                return resumed
            except urllib.error.HTTPError as exc:
                if exc.code not in _RETRY_STATUS:
                    raise WeightsError(
                        f"could not download {self.url}: HTTP {exc.code} {exc.reason}; check "
                        f"the URL, or download the file by hand and put it at {self.dest}"
                    ) from exc
                problem = f"HTTP {exc.code} {exc.reason}"
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                if _no_network(exc):
                    raise _offline(
                        self.url, self.dest, self.for_spec, f"no network ({_why(exc)})"
                    ) from exc
                if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, str):
                    raise WeightsError(f"cannot download {self.url}: {exc.reason}") from exc
                if isinstance(exc, OSError) and exc.errno in _LOCAL_ERRNOS:
                    local = storage_error(exc, self.partial, instead=CACHE_INSTEAD)
                    raise (local or WeightsError(f"cannot write {self.partial}")) from exc
                problem = _why(exc)
            if attempt == self.attempts:
                kept = self.partial.is_file() and self.partial.stat().st_size > 0
                raise WeightsError(
                    f"could not download {self.url} ({problem}, {self.attempts} tries); "
                    + (
                        f"the part fetched so far is kept at {self.partial} and the next run "
                        "resumes it; or "
                        if kept
                        else ""
                    )
                    + f"download the file by hand and put it at {self.dest}"
                )
            delay = self.backoff_s * 2 ** (attempt - 1)
            log.warning(
                "download of %s interrupted (%s); trying again in %.0fs (try %d of %d)",
                self.url,
                problem,
                delay,
                attempt + 1,
                self.attempts,
            )
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _transfer(self) -> None:
        """One request: the rest of the file after the part already here, or all of it."""
        have = self.partial.stat().st_size if self.partial.is_file() else 0
        meta = _read_json(self.meta) if have else {}
        headers = {"User-Agent": "headstart"}
        if have and meta.get("url") == self.url:
            headers["Range"] = f"bytes={have}-"
            # If the file changed on the server since, it sends all of the new one.
            etag = meta.get("etag") or ""
            validator = etag if etag and not etag.startswith("W/") else meta.get("modified")
            if validator:
                headers["If-Range"] = validator
        else:
            have = 0
        request = urllib.request.Request(self.url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # the server's file ends where the part does
                cut = format_problem(self.partial, name=self.dest.name)
                self.discard_partial()
                if cut is not None and cut.cut and "If-Range" in headers:
                    # A part that says it goes on, of the very file the server has: the
                    # server's copy itself is cut short.
                    raise WeightsError(
                        f"{self.url}: the server's copy is cut short (the file it sends "
                        f"{cut}); nothing was cached; check the URL"
                    ) from exc
                raise _Interrupted("the server cannot resume from the part kept") from exc
            raise
        with response:
            if have and (
                response.status != 206
                or _range_start(response.headers.get("Content-Range")) != have
            ):
                have = 0  # the server sent the whole file: start over
            length = response.headers.get("Content-Length", "")
            total = have + int(length) if length.isdigit() else None
            if have:
                log.info("resuming %s at byte %d", self.url, have)
            else:
                log.info("downloading %s to %s", self.url, self.dest)
                self.dest.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json(
                    self.meta,
                    {
                        "url": self.url,
                        "etag": response.headers.get("ETag"),
                        "modified": response.headers.get("Last-Modified"),
                    },
                )
            with (
                open(self.partial, "ab" if have else "wb") as fh,
                open_bar(
                    total,
                    self.dest.name,
                    enabled=self.progress,
                    initial=have,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                ) as bar,
            ):
                while chunk := response.read(_CHUNK):
                    fh.write(chunk)
                    bar.update(len(chunk))
                fh.flush()
                os.fsync(fh.fileno())
        size = self.partial.stat().st_size
        if total is not None and size != total:
            # http.client returns what it got when a connection closes early: check here.
            raise _Interrupted(f"connection closed after {size} of {total} bytes")
        if total is None:  # no Content-Length: only the file's own structure tells
            cut = format_problem(self.partial, name=self.dest.name)
            if cut is not None and cut.cut:
                raise _Interrupted(f"the transfer ended early: the file {cut}")


_LOCAL_ERRNOS = {errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT}


def _range_start(content_range: str | None) -> int | None:
    match = re.match(r"bytes (\d+)-", content_range or "")
    return int(match.group(1)) if match else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def _no_network(exc: BaseException) -> bool:
    """No route to the server at all (as opposed to a transfer that broke)."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, (socket.gaierror, ConnectionRefusedError)):
        return True
    return isinstance(reason, OSError) and reason.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH)


def _why(exc: BaseException) -> str:
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    text = str(reason).strip()
    return f"{type(reason).__name__}: {text}" if text else type(reason).__name__


def _offline(url: str, dest: Path, for_spec: str | None, why: str) -> WeightsError:
    part = partial_path(dest)
    kept = (
        f" (the part fetched so far is kept at {part}; the next run resumes it)"
        if part.is_file()
        else ""
    )
    add = f", or run: headstart cache add FILE --for {for_spec}" if for_spec else ""
    return WeightsError(
        f"{why}: {dest.name} is not in the cache{kept}; download {url} by hand and put it "
        f"at {dest}{add}"
    )


@contextlib.contextmanager
def cache_writer(dest: Path) -> Iterator[None]:
    """Hold a lock beside ``dest`` so that two processes never write one download (nor
    ``cache add`` the same file): the other waits for it (:func:`headstart._io.exclusive`).

    The kernel drops an ``flock`` when its process dies, so a killed run never leaves
    the lock held.  Without ``fcntl`` (not POSIX) or a writable folder, go without.
    """
    label = f"{dest.name} in the weights cache"
    with (
        exclusive(dest, label=label, wait=True, optional=True),
        writes_to(dest.parent, instead=CACHE_INSTEAD),
    ):
        yield

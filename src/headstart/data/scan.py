"""Check image files before training: open and fully decode every one, in parallel.

A data set scraped from a disk or the web holds empty files, half-downloaded JPEGs, web
pages saved with an image name and the odd decompression bomb.  :func:`scan_images`
finds them all in one pass, each with the reason, and gives every readable image a digest
of its decoded pixels so that duplicates and train/validation leakage can be found without
decoding again.  It uses a thread pool: Pillow's ``_decode`` (src/decode.c) runs the
decoder between ``ImagingSectionEnter``/``Leave``, which release the GIL, and hashlib
releases it while hashing large buffers, so threads decode in parallel without the
start-up and pickling of a process pool, or forking a process that holds torch
(bench/scan_bench.py measures both).

:func:`open_image` is the one way headstart opens an image file, in the scan and in
training alike: the pixel limit is checked from the header before anything is decoded,
the whole image is decoded (a truncated file fails here, not in the middle of an epoch),
and an EXIF orientation flag is applied so that phone photos come out upright.

Kept free of torch and numpy so that scan workers start quickly.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from headstart.errors import ConfigError, DataError

_log = logging.getLogger(__name__)


MAX_IMAGE_PIXELS_ENV = "HEADSTART_MAX_IMAGE_PIXELS"


# Pillow's own default (about 9459 x 9459): a 24-bit image this size is 256 MiB decoded.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485


# headstart checks the limit itself (below, with the file's name in the message); Pillow's
# warning between its limit and twice that would only repeat it without the name.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


_SERIAL_BELOW = 16  # so few files are checked faster than a pool starts


_BATCH = 4096  # files handed to the pool at a time


_CACHE_LIMIT = 200_000  # entries kept by the in-process cache of results


_cache: dict[tuple[str, int, int, int, int, int], ImageCheck] = {}


_cache_lock = threading.Lock()


def max_image_pixels() -> int | None:
    """The largest image (width x height) headstart opens; None when unlimited.

    ``$HEADSTART_MAX_IMAGE_PIXELS`` sets it (0: no limit); the default is Pillow's,
    :data:`DEFAULT_MAX_IMAGE_PIXELS`.  Raises :class:`ConfigError` for a value that is
    not a whole number >= 0.
    """
    text = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(
            f"${MAX_IMAGE_PIXELS_ENV}={text!r}; valid: a whole number of pixels >= 0 (0: no limit)"
        )
    limit = value or None
    if limit is None or (Image.MAX_IMAGE_PIXELS is not None and limit > 2 * Image.MAX_IMAGE_PIXELS):
        # Pillow refuses images over twice its own limit in Image.open, before headstart's
        # check; the user asked for more, and headstart checks the limit itself.
        Image.MAX_IMAGE_PIXELS = limit
    return limit


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:120] if text else "") or type(exc).__name__


def _sniff(path: Path) -> str:
    """What a file that Pillow cannot identify looks like, from its first bytes."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return "not an image (unrecognised format)"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in text:
        return "not an image: an HTML page (a web page saved with an image name?)"
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "not an image: an SVG drawing (convert it to PNG)"
    if text.startswith((b"<?xml", b"{", b"[")):
        return "not an image: a text file (XML or JSON)"
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "not an image: a text file"
    return "not an image (unrecognised format)"


class _TooLarge(Exception):
    """An image over the pixel limit; the message says so."""


def _link_problem(path: Path) -> str | None:
    """Why a symlink leads to no file (a loop, a target that is gone), or None."""
    if not path.is_symlink():
        return None
    try:
        path.stat()
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symlink loop (the link leads back to itself)"
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return f"broken symlink (its target {os.readlink(path)} does not exist)"
    return None


def image_problem(path: Path, exc: BaseException) -> str:
    """Why ``path`` cannot be used, in words, from the exception opening it raised."""
    if isinstance(exc, _TooLarge):
        return str(exc)
    link = _link_problem(path)
    if link:
        return link
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
    except OSError as err:
        return f"cannot read ({_first_line(err)})"
    if isinstance(exc, Image.DecompressionBombError):
        return f"too many pixels for Pillow ({_first_line(exc)}); a decompression bomb?"
    if isinstance(exc, UnidentifiedImageError):
        return _sniff(path)
    text = _first_line(exc)
    if "truncated" in text.lower() or isinstance(exc, EOFError):
        return "truncated (the file ends early: an interrupted download or copy?)"
    return f"corrupt ({text})"


def _decode(path: Path, limit: int | None) -> Image.Image:
    """Open, check the size, decode, rotate upright; raises whatever Pillow raises."""
    with Image.open(path) as opened:
        width, height = opened.size
        if limit is not None and width * height > limit:
            raise _TooLarge(
                f"{width} x {height} = {width * height:,} pixels, over the limit of "
                f"{limit:,} (a decompression bomb? if the image is genuine, raise "
                f"${MAX_IMAGE_PIXELS_ENV})"
            )
        opened.load()
    img: Image.Image = opened
    # Phone photos are often stored sideways with an EXIF flag saying so.
    if img.getexif().get(0x0112, 1) != 1:
        img = ImageOps.exif_transpose(img)
    return img


def open_image(path: Path) -> Image.Image:
    """``path`` opened, fully decoded and turned upright per its EXIF orientation.

    The size in the header is checked against :func:`max_image_pixels` before any pixel
    is decoded.  The mode is the file's own (``I;16``, ``RGBA``, ``P``, ``CMYK``, ...):
    :func:`headstart.data.transforms.to_model_mode` converts it for a model.  Raises
    :class:`DataError` naming the file and the reason.
    """
    limit = max_image_pixels()
    try:
        return _decode(path, limit)
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ...)
        raise DataError(f"{path}: {image_problem(path, exc)}") from exc


@dataclass(frozen=True)
class ImageCheck:
    """The outcome of checking one file: ``problem`` is empty when it can be used.

    ``digest`` (readable images only) is a SHA-256 of the decoded, upright pixels with
    their mode and size: equal digests mean the model sees the same image, whatever the
    file format or metadata.
    """

    path: Path
    problem: str = ""
    digest: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem


def _digest(img: Image.Image) -> str:
    h = hashlib.sha256(f"{img.mode}:{img.size[0]}x{img.size[1]}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def check_image(path: Path, limit: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> ImageCheck:
    """Open and decode ``path`` (see :func:`open_image`) under the pixel ``limit``.

    Never raises for a bad file: the reason is in ``problem``.
    """
    try:
        img = _decode(path, limit)
    except Exception as exc:  # any failure means the file cannot be used
        return ImageCheck(path, problem=image_problem(path, exc))
    return ImageCheck(path, digest=_digest(img))


def _key(path: Path, limit: int | None) -> tuple[str, int, int, int, int, int] | None:
    """A cache key that changes when the file does (or the pixel limit).

    ctime is in it because a copy that keeps the old mtime (``cp -p``, ``rsync -t``)
    still changes it, and nothing can set it back.
    """
    try:
        st = path.stat()
    except OSError:
        return None
    limit_key = -1 if limit is None else limit
    return (str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, limit_key)


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def scan_images(
    paths: Sequence[Path],
    *,
    progress: bool = False,
    workers: int | None = None,
    executor: str = "thread",
    cache: bool = True,
) -> list[ImageCheck]:
    """Check every file in ``paths`` (see :func:`check_image`), in parallel, in order.

    ``workers`` (default: the CPUs this process may use) threads, or processes with
    ``executor="process"``, share the work; ``progress`` shows a bar.  With ``cache``,
    a file already checked by this process and unchanged since (same size, mtime, ctime
    and inode, same pixel limit) is not decoded again.
    """
    from tqdm.auto import tqdm

    if executor not in ("thread", "process"):
        raise ConfigError(f"executor {executor!r}; valid: thread, process")
    limit = max_image_pixels()
    results: list[ImageCheck | None] = [None] * len(paths)
    keys = [_key(p, limit) if cache else None for p in paths]
    todo: list[int] = []
    with _cache_lock:
        for i, key in enumerate(keys):
            hit = _cache.get(key) if key is not None else None
            if hit is not None:
                results[i] = hit
            else:
                todo.append(i)
    t0 = time.perf_counter()
    n_workers = max(1, workers or _default_workers())
    with tqdm(
        total=len(paths),
        initial=len(paths) - len(todo),
        desc="checking images",
        unit="img",
        leave=False,
        disable=not progress or not paths,
    ) as bar:
        if len(todo) < _SERIAL_BELOW or n_workers == 1:
            for i in todo:
                results[i] = check_image(paths[i], limit)
                bar.update()
        else:
            pool: Executor = (
                ThreadPoolExecutor(n_workers)
                if executor == "thread"
                else ProcessPoolExecutor(n_workers)
            )
            with pool:
                # Submitted a batch at a time: a million pending futures would cost
                # gigabytes.  Many small tasks per worker keep the bar moving.
                for start in range(0, len(todo), _BATCH):
                    batch = todo[start : start + _BATCH]
                    chunk = 1 if executor == "thread" else max(1, len(batch) // (n_workers * 16))
                    files = [paths[i] for i in batch]
                    checked = pool.map(check_image, files, [limit] * len(batch), chunksize=chunk)
                    for i, result in zip(batch, checked, strict=True):
                        results[i] = result
                        bar.update()
    if cache:
        with _cache_lock:
            if len(_cache) + len(todo) > _CACHE_LIMIT:
                _cache.clear()
            for i in todo:
                key = keys[i]
                if key is not None:
                    _cache[key] = results[i]  # type: ignore[assignment]
    done = [r for r in results if r is not None]
    if todo:
        reused = len(paths) - len(todo)
        _log.info(
            "checked %d image(s) in %.1f s: %d bad%s",
            len(todo),
            time.perf_counter() - t0,
            sum(not r.ok for r in done),
            f" ({reused} more unchanged since checked)" if reused else "",
        )
    return done

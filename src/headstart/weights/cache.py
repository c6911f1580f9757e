"""The weights cache: what is in it, whether it is intact, and filling it by hand.

The cache is the one folder :func:`headstart.weights.resolve.cache_dir` names.  Its entries are
weights files at the top (torch hub's layout: ``resnet18-f37072fd.pth``) or one folder
down (timm's Hugging Face copies: ``timm--resnet18.a1_in1k/model.safetensors``), each
with a sidecar ``NAME.sha256.json`` once it has been checked; ``NAME.partial`` is a
download that was interrupted, which the next fetch resumes; ``NAME.bad-TIMESTAMP`` is a
file that failed its check or did not load, set aside so that the next run fetches it
again (kept to look at until ``cache clear``).  Downloading and the checks
themselves live in :mod:`headstart.weights.resolve` and :mod:`headstart.weights.download`;
this module is what ``headstart cache`` runs.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from headstart._io import LockedError, atomic_path, exclusive, remove_lock_if_free, sha256_file
from headstart.errors import WeightsError
from headstart.weights.download import (
    PARTIAL_SUFFIX,
    cache_writer,
    check_file,
    partial_path,
    write_stamp,
)
from headstart.weights.files import (
    SET_ASIDE,
    SIDECAR_SUFFIX,
    URL_SCHEMES,
    format_problem,
    load_state_dict,
    pickled_code,
    read_stamp,
    set_aside,
    unwrap_state_dict,
)
from headstart.weights.resolve import (
    WEIGHT_SUFFIXES,
    Remote,
    cache_dir,
    hash_prefix_in_name,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheEntry:
    """One file in the cache.

    ``status`` is, from :func:`list_cache`: ``checked`` (unchanged since its hash was
    recorded), ``unchecked`` (no record yet, or changed since: checked on next use),
    ``partial`` or ``set aside`` (``NAME.bad-TIMESTAMP``: never used); from
    :func:`verify_cache`: ``ok``, ``recorded`` (nothing to check it against: its hash is
    recorded now), ``damaged`` (a download is set aside: fetched again when next needed),
    ``partial`` or ``set aside``.
    """

    name: str  # relative to the cache folder
    path: Path
    size: int
    sha256: str | None
    status: str
    source: str | None = None  # the URL it came from, or how it came into the cache
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "size": self.size,
            "sha256": self.sha256,
            "status": self.status,
            "source": self.source,
            "detail": self.detail,
        }


def _files(folder: Path) -> Iterator[Path]:
    """Weights files and partial downloads, at the top of ``folder`` or one level down."""
    if not folder.is_dir():
        return
    for top in sorted(folder.iterdir()):
        children = sorted(top.iterdir()) if top.is_dir() else [top]
        for path in children:
            if path.is_file() and not path.name.startswith(".") and _is_entry(path.name):
                yield path


_SET_ASIDE = re.compile(re.escape(SET_ASIDE) + r"\d{8}T\d{6}(-\d+)?$")


def _is_set_aside(name: str) -> bool:
    match = _SET_ASIDE.search(name)
    return match is not None and name[: match.start()].endswith(WEIGHT_SUFFIXES)


def _is_entry(name: str) -> bool:
    return name.endswith((*WEIGHT_SUFFIXES, PARTIAL_SUFFIX)) or _is_set_aside(name)


def _unused_entry(path: Path, folder: Path) -> CacheEntry | None:
    """The entry of a partial download or a file set aside; None for a cache file."""
    if path.name.endswith(PARTIAL_SUFFIX):
        status, detail = "partial", "an interrupted download; the next run that needs it resumes it"
    elif _is_set_aside(path.name):
        status, detail = "set aside", "failed its check; never used; cache clear --yes deletes it"
    else:
        return None
    return CacheEntry(
        name=str(path.relative_to(folder)),
        path=path,
        size=path.stat().st_size,
        sha256=None,
        status=status,
        detail=detail,
    )


def list_cache(cache: str | os.PathLike[str] | None = None) -> list[CacheEntry]:
    """Every entry of the cache with what its sidecar says; nothing is hashed."""
    folder = cache_dir(cache)
    entries = []
    for path in _files(folder):
        if (unused := _unused_entry(path, folder)) is not None:
            entries.append(unused)
            continue
        st = path.stat()
        stamp = read_stamp(path)
        fresh = stamp is not None and stamp.matches(st)
        entries.append(
            CacheEntry(
                name=str(path.relative_to(folder)),
                path=path,
                size=st.st_size,
                sha256=stamp.sha256 if stamp is not None and fresh else None,
                status="checked" if fresh else "unchecked",
                source=stamp.source if stamp is not None else None,
                detail="" if fresh or stamp is None else "changed since its hash was recorded",
            )
        )
    return entries


def verify_cache(
    cache: str | os.PathLike[str] | None = None, names: Sequence[str] = ()
) -> list[CacheEntry]:
    """Hash every entry (or those ``names``) again and check it.

    A file is checked against its sidecar; one without a sidecar against the hash
    prefix in its name (torch hub's ``NAME-HASH.pth``), else its hash is recorded.  A
    damaged download is set aside, so that the next run that needs it fetches it again.
    Raises :class:`WeightsError` for a name that is not in the cache.
    """
    folder = cache_dir(cache)
    paths = list(_files(folder))
    if names:
        by_name = {str(p.relative_to(folder)): p for p in paths}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise WeightsError(
                f"not in the cache {folder}: {', '.join(unknown)} (see headstart cache list)"
            )
        paths = [by_name[n] for n in names]
    entries = []
    for path in paths:
        if (unused := _unused_entry(path, folder)) is not None:
            entries.append(unused)
            continue
        stamp = read_stamp(path)
        expected = None if stamp is not None else hash_prefix_in_name(path.name)
        check = check_file(path, expected=expected, rehash=True)
        if check.ok:
            status, detail = ("ok", f"matches {check.basis}") if check.basis else ("recorded", "")
        else:
            status, detail = "damaged", str(check.problem)
            if stamp is not None and stamp.source.startswith(URL_SCHEMES):
                detail += _set_aside_for_next_run(path)
        entries.append(
            CacheEntry(
                name=str(path.relative_to(folder)),
                path=path,
                size=check.size,
                sha256=check.sha256,
                status=status,
                source=stamp.source if stamp is not None else None,
                detail=detail,
            )
        )
    return entries


def _set_aside_for_next_run(path: Path) -> str:
    """Set a damaged download aside (its hash alone may have changed, which its next use
    would not see); what to add to its report."""
    with cache_writer(path):  # not while a download of it is being written
        try:
            aside = set_aside(path)
        except OSError as exc:
            return f"; cannot set it aside ({exc.strerror or exc}): delete it"
    return f"; set aside as {aside.name}: fetched again when next needed"


def add_to_cache(file: str | os.PathLike[str], remote: Remote, *, spec: str) -> Path:
    """Copy ``file`` to ``remote.dest``, where the resolver looks for ``spec``'s weights
    (:func:`headstart.sources.locate.location_for`), and return that path.

    The file is checked first: against the published hash where there is one, for
    completeness, and that it loads safely.  Raises :class:`WeightsError` saying why not.
    """
    file = Path(file).expanduser()
    if not file.is_file():
        raise WeightsError(f"{file}: no such file")
    if (file.suffix == ".safetensors") != (remote.dest.suffix == ".safetensors"):
        raise WeightsError(
            f"{file}: {spec}'s weights are kept as {remote.dest.name}; give a "
            f"{remote.dest.suffix or 'non-safetensors'} file, not a {file.suffix or 'plain'} one"
        )
    digest = sha256_file(file)
    if remote.sha256 and not digest.startswith(remote.sha256):
        raise WeightsError(
            f"{file}: sha256 {digest[:16]}... is not the {remote.sha256[:16]}... of {spec}'s "
            f"weights ({remote.url}); a damaged download, or another file?"
        )
    problem = format_problem(file, name=remote.dest.name)
    if problem is not None:
        raise WeightsError(f"{file} {problem}; download it again")
    load_state_dict(file)  # refuses a pickle that would run code, or an unreadable file
    with cache_writer(remote.dest):  # not while a download of it is being written
        try:
            with atomic_path(remote.dest) as tmp:
                shutil.copyfile(file, tmp)
        except OSError as exc:
            raise WeightsError(
                f"cannot copy {file} to {remote.dest}: {exc.strerror or exc}"
            ) from exc
        write_stamp(remote.dest, digest, f"added by hand from {file}")
        part = partial_path(remote.dest)  # an interrupted download of it: not needed now
        for leftover in (part, part.with_name(part.name + ".json")):
            leftover.unlink(missing_ok=True)
    return remote.dest


class Conversion(NamedTuple):
    """What :func:`convert_to_safetensors` wrote, and whether it had to unpickle."""

    path: Path
    unpickled: bool  # read with weights_only=False: the file's pickled code ran


def convert_to_safetensors(
    file: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *, trust: bool = False
) -> Conversion:
    """Rewrite a ``.pth``/``.pt``/``.bin`` checkpoint as safetensors.

    The file is read safely first (``torch.load(weights_only=True)``): plain tensors and
    containers convert as they are.  A file that holds other pickled objects is refused,
    and nothing in it runs, unless ``trust``: then it is read with ``weights_only=False``,
    which RUNS the code pickled in it, with the user's permissions; for files from a
    source you trust only.  Wrappers (``state_dict``, ``model``, ``module.``) are unwrapped,
    a pickled whole model becomes its state dict.
    """
    import pickle

    import torch
    from safetensors.torch import save_file
    from torch import nn

    file = Path(file).expanduser()
    if not file.is_file():
        raise WeightsError(f"{file}: no such file")
    dest = Path(out).expanduser() if out else file.with_suffix(".safetensors")
    if dest.exists():
        raise WeightsError(f"{dest} already exists; remove it or give another --out")
    problem = format_problem(file)
    if problem is not None:
        raise WeightsError(f"{file} {problem}; not a checkpoint to convert")
    unpickled = False
    try:
        try:
            obj = torch.load(str(file), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            code = pickled_code(exc)
            if code is None:
                raise
            if not trust:
                raise WeightsError(
                    f"{file}: not converted: it holds pickled objects ({code}) whose "
                    "unpickling can run any code on this machine; nothing was run. Only if "
                    "the file comes from a source you trust, run: headstart cache convert "
                    f"{shlex.quote(str(file))} --trust"
                ) from exc
            log.warning(
                "%s: --trust: unpickling it with torch.load(weights_only=False), which runs "
                "the code it holds (%s)",
                file,
                code,
            )
            unpickled = True
            obj = torch.load(str(file), map_location="cpu", weights_only=False)
    except WeightsError:
        raise
    except Exception as exc:  # a damaged file, or (trusted) pickled code that failed
        raise WeightsError(f"{file}: not a readable checkpoint ({str(exc)[:200]})") from exc
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    state = unwrap_state_dict(obj, where=str(file))
    # safetensors refuses tensors that share memory (tied weights): give each its own.
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
    try:
        with atomic_path(dest) as tmp:
            save_file(tensors, str(tmp), metadata={"headstart.converted_from": file.name})
    except OSError as exc:
        raise WeightsError(f"cannot write {dest}: {exc.strerror or exc}") from exc
    return Conversion(dest, unpickled)


def _companions(path: Path) -> list[Path]:
    """What belongs with a cache file: its sidecar, the record of a partial download,
    and the ``.json`` headstart writes beside its own built-in weights."""
    found = [path.with_name(path.name + SIDECAR_SUFFIX), path.with_name(path.name + ".json")]
    if path.name.startswith("headstart-"):
        found.append(path.with_suffix(".json"))
    return [p for p in found if p.is_file() and p != path]


def _locks(folder: Path) -> Iterator[Path]:
    """The lock files downloads leave (``.NAME.lock``; never held by a dead process)."""
    if folder.is_dir():
        for top in folder.iterdir():
            for path in sorted(top.iterdir()) if top.is_dir() else [top]:
                if path.name.startswith(".") and path.name.endswith(".lock") and path.is_file():
                    yield path


def clear_cache(cache: str | os.PathLike[str] | None = None, *, yes: bool = False) -> list[Path]:
    """Delete every cache entry and what belongs with it; return what was (or, without
    ``yes``, would be) deleted.  Other files in the folder are left alone."""
    folder = cache_dir(cache)
    doomed: list[Path] = []
    for path in _files(folder):
        entry = [path, *_companions(path)]
        if not yes:
            doomed += entry
            continue
        final = path.with_name(path.name.removesuffix(PARTIAL_SUFFIX))  # what a download locks
        try:
            with exclusive(final, optional=True):  # not while another process writes it
                for p in entry:
                    p.unlink(missing_ok=True)
            doomed += entry
        except LockedError:
            log.warning("%s: another process is writing it; left alone", path)
    for lock in list(_locks(folder)):  # left by killed processes: held by nobody
        if not yes or remove_lock_if_free(lock):
            doomed.append(lock)
    if yes:
        for sub in {p.parent for p in doomed if p.parent != folder}:
            if sub.is_dir() and not any(sub.iterdir()):
                sub.rmdir()
    return doomed

"""Run directories: what a finished fit leaves (:func:`headstart.sources.target.load_run`
loads it back).

A run dir holds ``model.safetensors``, ``headstart.json`` (architecture, classes,
preprocessing, plan, metrics, versions, data fingerprint), ``metrics.csv``,
``curves.png`` and ``report.md``.  It is written into a hidden sibling folder and moved
into place only when complete, so a run dir that exists is a whole one.

What may be written where (:func:`prepare_out`, :func:`writing`): ``--overwrite`` replaces
only a headstart artefact (a run dir: it holds ``headstart.json``; a comparison:
``compare.json``; ...) or an empty folder, never a folder that is, holds or lies inside
the input data; and one process at a time writes an output (a lock file beside it).
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from headstart._io import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    current_umask,
    exclusive,
    writes_to,
)
from headstart._version import __version__
from headstart.errors import ConfigError, RunError, storage_error

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
META_FILE = "headstart.json"


def library_versions() -> dict[str, str]:
    import timm
    import torchvision

    return {
        "headstart": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "platform": platform.platform(),
    }


def save_model(path: Path, model: nn.Module, *, arch: str, arch_options: dict[str, Any]) -> None:
    """Write the model's weights as safetensors, with the architecture in the header."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": "pt",
        "headstart.format": str(FORMAT_VERSION),
        "headstart.arch": arch,
        "headstart.arch_options": json.dumps(arch_options),
        "headstart.num_classes": str(model.num_classes),
    }
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)


def metrics_csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


# The options that name data a command reads, and their flags.
INPUT_OPTIONS = (("data", "DATA"), ("val", "--val"), ("target", "--target"), ("eval", "--eval"))


def input_paths(options: Any) -> list[tuple[str, str]]:
    """``(flag, path)`` for each input an options object names (DATA, ``--val``,
    ``--target``, ``--eval``): what no output may be written over or into."""
    found = []
    for name, flag in INPUT_OPTIONS:
        value = getattr(options, name, None)
        if isinstance(value, (str, os.PathLike)) and str(value):
            found.append((flag, str(value)))
    return found


def check_not_inputs(
    out: str | os.PathLike[str], inputs: Iterable[tuple[str, str]], *, flag: str = "--out"
) -> None:
    """Refuse an output that is an input, holds one or lies inside one (compared as real
    paths; specs that are not local paths, ``builtin:...``, are not data on disk)."""
    where = Path(os.path.abspath(Path(out).expanduser())).resolve()
    for in_flag, spec in inputs:
        path = Path(spec).expanduser()
        if not path.exists():
            continue
        data = path.resolve()
        if _same(where, data):
            why = "is the input data"
        elif any(_same(a, where) for a in data.parents):
            why = "holds the input data"
        elif any(_same(a, data) for a in where.parents):
            why = "is inside the input data"
        else:
            continue
        raise ConfigError(
            f"{flag} {out}: {why} ({in_flag} {spec}); headstart never writes over or into "
            f"its input, even with --overwrite; choose a {flag} outside it"
        )


def _same(a: Path, b: Path) -> bool:
    """One folder, by name or (a case-insensitive file system, a hard link) by inode."""
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def prepare_out(
    out: str | os.PathLike[str],
    *,
    overwrite: bool,
    inputs: Iterable[tuple[str, str]] = (),
    marker: str = META_FILE,
    what: str = "run dir",
    flag: str = "--out",
) -> Path:
    """Check that ``out`` may be written: a new or empty folder, or (with ``overwrite``)
    a headstart ``what``, the folder that holds ``marker``; never one of ``inputs``
    (:func:`input_paths`), a folder that holds one or a folder inside one.  Anything else
    is a :class:`ConfigError` naming the folder and why; a folder that cannot be written
    (read-only, no permission, a full disk) a :class:`StorageError`, before any work."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{flag} {out}: exists and is not a folder")
    check_not_inputs(out, inputs, flag=flag)
    if out.is_dir():
        _check_writable(out, flag)
    if out.is_dir() and any(out.iterdir()):
        if not (out / marker).is_file():
            raise ConfigError(
                f"{flag} {out}: the folder is not empty and is not a headstart {what} (it has "
                f"no {marker}); headstart never replaces it, even with --overwrite; choose a "
                f"new or empty folder for {flag}"
            )
        if not overwrite:
            raise ConfigError(
                f"{flag} {out}: holds a headstart {what}; choose another {flag}, or pass "
                "--overwrite to replace it"
            )
    return out


def _check_writable(folder: Path, flag: str) -> None:
    """A file made and dropped in ``folder``: the kernel's answer, which ``os.access``
    cannot give (root, read-only mounts, ACLs)."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".headstart-probe-"):
            pass
    except OSError as exc:
        error = storage_error(exc, folder, instead=f"choose another {flag}")
        if error is None:
            raise
        raise error from exc


@contextmanager
def writing(
    out: str | os.PathLike[str],
    *,
    inputs: Iterable[tuple[str, str]] = (),
    flag: str = "--out",
) -> Iterator[Path]:
    """Make this process the one writer of ``out`` for the block.

    ``out`` is checked against ``inputs`` first (:func:`check_not_inputs`: nothing, not
    even the lock file, is made inside the data), then locked: ``.NAME.lock`` beside it,
    held until the block ends however it ends (:func:`headstart._io.exclusive`).  A second
    process gets a :class:`ConfigError` naming ``out`` and the holder.
    """
    check_not_inputs(out, inputs, flag=flag)
    with exclusive(out, label=f"{flag} {out}", instead=f"choose another {flag}"):
        yield Path(out)


def write_run(
    out: str | os.PathLike[str],
    *,
    model: nn.Module,
    meta: dict[str, Any],
    metrics_rows: list[dict[str, Any]],
    extras: Callable[[Path], None] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a complete run dir at ``out`` atomically; return its path.

    ``extras(folder)`` may add files (plots, report) before the folder is moved in.
    """
    out = prepare_out(out, overwrite=overwrite)
    with writes_to(out, instead="choose another --out"):
        return _write_run(out, model=model, meta=meta, metrics_rows=metrics_rows, extras=extras)


def _write_run(
    out: Path,
    *,
    model: nn.Module,
    meta: dict[str, Any],
    metrics_rows: list[dict[str, Any]],
    extras: Callable[[Path], None] | None,
) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it 0700
    try:
        save_model(
            staging / MODEL_FILE,
            model,
            arch=meta["source"]["arch"],
            arch_options=meta["source"].get("arch_options", {}),
        )
        atomic_write_text(staging / "metrics.csv", metrics_csv(metrics_rows))
        if extras is not None:
            extras(staging)
        meta = {"format_version": FORMAT_VERSION, **meta, "versions": library_versions()}
        atomic_write_json(staging / META_FILE, meta)
        if out.exists():
            _replace_folder(out, staging)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _replace_folder(out: Path, new: Path) -> None:
    """``new`` in place of the folder ``out``; the old one is kept until the new one is in
    (and put back if it cannot be), then removed."""
    trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    try:
        os.replace(out, trash / "old")
        try:
            os.replace(new, out)
        except BaseException:
            os.replace(trash / "old", out)
            raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def is_run_dir(path: str | os.PathLike[str]) -> bool:
    p = Path(path)
    return (p / META_FILE).is_file()


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    run = Path(path)
    if not run.exists():
        raise RunError(f"{run}: no such run dir")
    meta_path = run / META_FILE
    if not meta_path.is_file():
        raise RunError(f"{run}: not a headstart run dir (no {META_FILE}); pass the --out of a fit")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{meta_path}: damaged ({exc})") from exc
    for key in ("source", "classes", "preprocessing"):
        if key not in meta:
            raise RunError(f"{meta_path}: damaged (no {key!r})")
    if not (run / MODEL_FILE).is_file():
        raise RunError(f"{run}: incomplete run dir (no {MODEL_FILE})")
    return dict(meta)

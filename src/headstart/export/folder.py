"""The folder exports (``timm``, ``hf``): which runs can take them, and writing the folder
whole or not at all.

A folder is built in a temporary folder beside ``--out``, checked by its writer (loaded
back with the ecosystem's own loader and run against the run's model), given its model
card and ``headstart_export.json``, then moved into place.  ``headstart_export.json``
marks the folder as headstart's: ``--overwrite`` replaces such a folder and nothing else.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from headstart._io import atomic_write_json, fsync_dir
from headstart.errors import ConfigError
from headstart.export.card import model_card
from headstart.export.hf import write_hf
from headstart.export.onnx import FILE_FORMATS, preprocessing_spec
from headstart.export.result import ExportResult, Written
from headstart.export.timm_ import write_timm
from headstart.sources.target import LoadedRun

__all__ = ["FOLDER_FORMATS", "MARKER", "export_folder"]

log = logging.getLogger(__name__)

Writer = Callable[[LoadedRun, Path], Written]
# format -> (the source family whose runs it takes, the writer)
FOLDER_FORMATS: dict[str, tuple[str, Writer]] = {
    "timm": ("timm", write_timm),
    "hf": ("hf", write_hf),
}
MARKER = "headstart_export.json"


def family(loaded: LoadedRun) -> str:
    """The source family the run's architecture was built by (``timm``, ``hf``, ...)."""
    return str(loaded.meta["source"]["arch"]).split(":", 1)[0]


def _check_family(loaded: LoadedRun, format: str) -> None:
    wanted = FOLDER_FORMATS[format][0]
    have = family(loaded)
    if have == wanted:
        return
    others = [f for f, (fam, _) in FOLDER_FORMATS.items() if fam == have]
    usable = ", ".join([*FILE_FORMATS, *others])
    raise ConfigError(
        f"--format {format}: {loaded.path} was fitted on {loaded.meta['source']['arch']}, "
        f"not a {wanted}: model; this run exports as {usable}"
    )


def _is_export(folder: Path) -> bool:
    try:
        spec = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(spec, dict) and {"format", "classes", "run_dir"} <= spec.keys()


def _replaceable(dest: Path, overwrite: bool) -> bool:
    """Whether ``dest`` holds an earlier export to replace; refuse anything else but a
    missing or empty folder."""
    if not dest.exists():
        return False
    if dest.is_dir() and not any(dest.iterdir()):
        return False
    if not dest.is_dir() or not _is_export(dest):
        raise ConfigError(
            f"--out {dest}: exists and is not a headstart export (no {MARKER} written by "
            "export in it); headstart never replaces it, even with --overwrite; choose "
            "another --out"
        )
    if not overwrite:
        raise ConfigError(f"--out {dest}: exists; pass --overwrite or another --out")
    return True


def _marker(loaded: LoadedRun, format: str, written: Written, dest: Path) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "format": format,
        "classes": list(loaded.classes),
        "run_dir": str(loaded.path),
        "source": loaded.meta["source"].get("spec"),
        "library": written.library,
        "loader": written.loader.replace("{path}", str(dest)),
        "max_abs_diff": written.max_abs_diff,
    }
    if loaded.text is None:  # images: how to prepare one, as the file exports say
        spec["preprocessing"] = preprocessing_spec(loaded, format)
    else:
        spec["max_length"] = (loaded.meta.get("text") or {}).get("max_length")
    return spec


def _swap(staging: Path, dest: Path, replace: bool) -> None:
    """Move ``staging`` to ``dest``; an earlier export there goes only once it is in."""
    old = dest.with_name(f".{dest.name}.old")
    if replace:
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    elif dest.exists():  # an empty folder
        dest.rmdir()
    os.replace(staging, dest)
    fsync_dir(dest.parent)
    shutil.rmtree(old, ignore_errors=True)


def export_folder(loaded: LoadedRun, format: str, dest: Path, overwrite: bool) -> ExportResult:
    """Write the ``format`` folder of ``loaded`` at ``dest``; the caller holds its lock."""
    _check_family(loaded, format)
    replace = _replaceable(dest, overwrite)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        written = FOLDER_FORMATS[format][1](loaded, staging)
        (staging / "README.md").write_text(model_card(loaded, written, dest), encoding="utf-8")
        atomic_write_json(staging / MARKER, _marker(loaded, format, written, dest))
        _swap(staging, dest, replace)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.debug("exported %s (max |logit difference| %.2g): %s", format, written.max_abs_diff, dest)
    return ExportResult(
        path=dest,
        preprocessing=dest / MARKER,
        format=format,
        max_abs_diff=written.max_abs_diff,
        loader=written.loader.replace("{path}", str(dest)),
        card=dest / "README.md",
    )

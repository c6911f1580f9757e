"""``headstart embed``: a source's features and the labels, as files other tools read.

The format follows ``--out``'s extension:

- ``.npz``: arrays ``features`` ``[N, D]`` float32, ``labels`` ``[N]`` int64 (-1: none),
  ``classes`` and ``items`` (paths, or ``SPEC[i]`` for in-memory images);
- ``.npy``: the features; beside it ``STEM.labels.npy`` and ``STEM.json`` (classes,
  items, source, preprocessing);
- ``.parquet`` (needs ``pyarrow``): one row per image, columns ``item``, ``label``,
  ``label_index`` and ``features`` (a fixed-size list of float32).

Features are the backbone's outputs on the evaluation preprocessing, taken from (and
added to) the feature cache unless ``--no-feature-cache``.

Each format says that embed wrote it (``MARK``: the ``.npz``'s ``headstart`` array, the
``.npy``'s ``STEM.json``, the ``.parquet``'s schema metadata), and ``--overwrite``
replaces only such files: never a file of the user's that has the same name.
"""

from __future__ import annotations

import json
import logging
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart._io import atomic_path, atomic_write_json, writes_to
from headstart.config.options import EmbedOptions
from headstart.data.images import load_data
from headstart.errors import ConfigError
from headstart.features.cache import EVAL_VIEW, cached_features, extract
from headstart.runtime import loader_workers, resolve_device
from headstart.sources import build_source
from headstart.train.assemble import build_options

log = logging.getLogger(__name__)


FORMATS = (".npz", ".npy", ".parquet")
MARK = "headstart"  # the .npz array, the parquet metadata key, the sidecar's written_by


@dataclass
class EmbedResult:
    out: Path
    files: list[Path]
    n_items: int
    dim: int
    cache_hit: bool
    seconds: float

    def summary(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "files": [str(f) for f in self.files],
            "n_items": self.n_items,
            "dim": self.dim,
            "feature_cache_hit": self.cache_hit,
            "seconds": self.seconds,
        }


def _check_out(options: EmbedOptions) -> Path:
    if not options.out:
        raise ConfigError("--out FILE is required (.npz, .npy or .parquet)")
    out = Path(options.out).expanduser()
    if out.suffix.lower() not in FORMATS:
        raise ConfigError(
            f"--out {out}: unknown format {out.suffix or '(no extension)'!r}; "
            f"use one of {', '.join(FORMATS)}"
        )
    if out.suffix.lower() == ".parquet":
        try:
            import pyarrow  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
        except ImportError:
            raise ConfigError(
                f"--out {out}: Parquet needs pyarrow (pip install pyarrow); or write .npz"
            ) from None
    if out.is_dir():
        raise ConfigError(f"--out {out}: is a folder; give a file name")
    for f in _files_for(out):
        if not f.exists():
            continue
        if not _written_by_embed(out):
            raise ConfigError(
                f"--out {out}: {f} exists and was not written by headstart embed (no "
                f"{_mark_of(out)}); headstart never replaces it, even with --overwrite; "
                "choose another --out"
            )
        if not options.overwrite:
            raise ConfigError(f"--out {out}: {f} exists; choose another --out or pass --overwrite")
    return out


def _mark_of(out: Path) -> str:
    return {
        ".npz": f"{MARK!r} array in it",
        ".npy": f"{out.with_suffix('.json').name} written by embed beside it",
        ".parquet": f"{MARK!r} key in its metadata",
    }[out.suffix.lower()]


def _written_by_embed(out: Path) -> bool:
    """Whether ``out`` (and, for ``.npy``, its sidecar) is an earlier embed's output."""
    suffix = out.suffix.lower()
    try:
        if suffix == ".npz":
            with zipfile.ZipFile(out) as z:
                return f"{MARK}.npy" in z.namelist()
        if suffix == ".npy":
            meta = json.loads(out.with_suffix(".json").read_text())
            return isinstance(meta, dict) and (
                meta.get("written_by") == "headstart embed"
                or {"source", "classes", "shape", "items"} <= meta.keys()  # before the mark
            )
        import pyarrow.parquet as pq  # type: ignore[import-not-found,unused-ignore]

        metadata = pq.read_schema(out).metadata or {}
        return MARK.encode() in metadata
    except Exception:  # unreadable, not a zip, not JSON, not parquet: not embed's
        return False


def _files_for(out: Path) -> list[Path]:
    if out.suffix.lower() == ".npy":
        return [out, out.with_name(out.stem + ".labels.npy"), out.with_suffix(".json")]
    return [out]


def embed(options: EmbedOptions) -> EmbedResult:
    """Run ``options.source``'s backbone over ``options.data`` and write ``options.out``."""
    t0 = time.perf_counter()
    out = _check_out(options)
    data = load_data(options.data)
    build = build_options(options)
    source = build_source(options.source, weights=options.weights, options=build)
    device = resolve_device(options.device)
    common: dict[str, Any] = dict(
        device=device,
        batch_size=options.batch_size,
        workers=loader_workers(options.workers, device, kind=source.inputs.kind),
        progress=options.progress,
    )
    if options.feature_cache:
        feats, hit = cached_features(source, data, EVAL_VIEW, cache=options.cache_dir, **common)
    else:
        feats, hit = extract(source, data, EVAL_VIEW, **common), False
    labels = np.asarray(data.targets, dtype=np.int64)
    items = [data.name_of(i) for i in range(len(data))]
    described = {
        "written_by": "headstart embed",
        "source": source.describe(),
        "data": options.data,
        "classes": list(data.classes),
        "shape": list(feats.shape),
    }
    with writes_to(out, instead="choose another --out"):  # read-only, full disk: say so
        _write(out, feats, labels, items, data.classes, described)
    log.debug("wrote %s: %d x %d features", out, *feats.shape)  # the command says it
    return EmbedResult(
        out=out,
        files=_files_for(out),
        n_items=len(data),
        dim=int(feats.shape[1]),
        cache_hit=hit,
        seconds=time.perf_counter() - t0,
    )


def _write(
    out: Path,
    feats: np.ndarray,
    labels: np.ndarray,
    items: list[str],
    classes: list[str],
    described: dict[str, Any],
) -> None:
    suffix = out.suffix.lower()
    if suffix == ".npz":
        arrays = {
            "features": feats,
            "labels": labels,
            "classes": np.asarray(classes, dtype=str),
            "items": np.asarray(items, dtype=str),
            MARK: np.asarray(json.dumps(described, default=str)),  # embed wrote it
        }
        with atomic_path(out) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
    elif suffix == ".npy":
        feats_file, labels_file, meta_file = _files_for(out)
        with atomic_path(feats_file) as tmp, open(tmp, "wb") as fh:
            np.save(fh, feats)
        with atomic_path(labels_file) as tmp, open(tmp, "wb") as fh:
            np.save(fh, labels)
        atomic_write_json(meta_file, {**described, "items": items})
    else:
        _write_parquet(out, feats, labels, items, classes, described)


def _write_parquet(
    out: Path,
    feats: np.ndarray,
    labels: np.ndarray,
    items: list[str],
    classes: list[str],
    described: dict[str, Any],
) -> None:
    import pyarrow as pa  # type: ignore[import-not-found,unused-ignore]
    import pyarrow.parquet as pq  # type: ignore[import-not-found,unused-ignore]

    d = int(feats.shape[1])
    flat = pa.array(np.ascontiguousarray(feats).reshape(-1), type=pa.float32())
    table = pa.table(
        {
            "item": pa.array(items, type=pa.string()),
            "label": pa.array([classes[t] if t >= 0 else None for t in labels], type=pa.string()),
            "label_index": pa.array(labels, type=pa.int64()),
            "features": pa.FixedSizeListArray.from_arrays(flat, d),
        }
    )
    table = table.replace_schema_metadata({MARK: json.dumps(described, default=str)})
    with atomic_path(out) as tmp:
        pq.write_table(table, str(tmp))

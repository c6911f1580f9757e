"""The feature cache: a frozen backbone run once over the data, its outputs kept on disk.

When the whole backbone is frozen (``linear``), every epoch of the usual loop runs the
same backbone over the same images again.  Here the backbone's outputs are computed
once per *(architecture, frozen weights, preprocessing, view)* and *image content*, and
kept in ``CACHE/features/`` (``CACHE`` is :func:`headstart.weights.resolve.cache_dir`):

- ``NAME.npy``: the ``[N, D]`` float32 features (read memory-mapped);
- ``NAME.items.npy``: ``[N]`` SHA-256 digests of the images' bytes, row by row;
- ``NAME.json``: the sidecar, written last (shape, dtype, the model key, what made it).

An entry without a sidecar, or whose files disagree with it, is never used (and is
removed when found).  Entries are matched by model key and then by image digest, so one
entry made for a whole data set serves every cross-validation fold, later runs and
other strategies on the same backbone.

``partial:K`` caches the output of the frozen prefix (the first K stages,
:mod:`headstart.train.prefix`) the same way: the key then also names the prefix (K, its
stages and the module whose output is kept), and each row is a flattened feature map
(``item_shape`` in the sidecar).  The folder is kept under a size cap
(``$HEADSTART_FEATURE_CACHE_GB``, default 5 GB) by removing the least recently used
entries.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from headstart._io import atomic_path, atomic_write_json
from headstart._progress import bar
from headstart.data.labelled import LabeledData
from headstart.data.transforms import ImageDataset, Preprocessing, make_transform
from headstart.errors import ConfigError, DataError
from headstart.sources.base import Source
from headstart.weights.resolve import cache_dir

log = logging.getLogger(__name__)


FORMAT = 1
SUBDIR = "features"
ENV_MAX_GB = "HEADSTART_FEATURE_CACHE_GB"
DEFAULT_MAX_GB = 5.0
_DIGEST = "S32"  # raw SHA-256 bytes


def features_dir(cache: str | os.PathLike[str] | None = None) -> Path:
    """``CACHE/features``: where the feature cache lives."""
    return cache_dir(cache) / SUBDIR


def max_bytes() -> int:
    """The size cap of the feature cache, from ``$HEADSTART_FEATURE_CACHE_GB``."""
    text = os.environ.get(ENV_MAX_GB, "").strip()
    if not text:
        return int(DEFAULT_MAX_GB * 2**30)
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(
            f"${ENV_MAX_GB}={text!r}: not a number; give the feature cache's size cap in GB"
        ) from None
    if value < 0:
        raise ConfigError(f"${ENV_MAX_GB}={text!r}: must be >= 0 (0 keeps nothing)")
    return int(value * 2**30)


@dataclass(frozen=True)
class View:
    """Which image the backbone saw: the evaluation preprocessing, or augmented view
    ``index`` of ``augment`` (each image's randomness is seeded by ``seed``, the view
    and the image's content, so a view is the same whatever subset it is computed in)."""

    augment: str = "none"
    index: int = 0
    seed: int = 0
    allow_hflip: bool = True

    @property
    def augmented(self) -> bool:
        return self.augment != "none"

    def to_dict(self) -> dict[str, Any]:
        if not self.augmented:
            return {"augment": "none"}
        return {
            "augment": self.augment,
            "index": self.index,
            "seed": self.seed,
            "allow_hflip": self.allow_hflip,
        }


EVAL_VIEW = View()


# (path, size, mtime_ns) -> digest: a file is hashed once per process
_FILE_DIGESTS: dict[tuple[str, int, int], bytes] = {}


def item_digests(data: LabeledData) -> np.ndarray:
    """``[N]`` SHA-256 digests (raw bytes) of each item's content: file bytes or array."""
    out = np.empty(len(data), dtype=_DIGEST)
    for i, item in enumerate(data.items):
        if isinstance(item, Path):
            try:
                st = item.stat()
                memo = (str(item), st.st_size, st.st_mtime_ns)
                digest = _FILE_DIGESTS.get(memo)
                if digest is None:
                    digest = hashlib.sha256(item.read_bytes()).digest()
                    _FILE_DIGESTS[memo] = digest
            except OSError as exc:
                raise DataError(f"{item}: cannot read ({exc})") from exc
        else:
            arr = np.ascontiguousarray(item)
            h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
            h.update(arr.tobytes())
            digest = h.digest()
        out[i] = digest
    return out


def state_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers (names, dtypes, shapes and values)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_key(
    source: Source,
    view: View = EVAL_VIEW,
    *,
    weights: str | None = None,
    part: dict[str, Any] | None = None,
) -> str:
    """What makes two feature matrices interchangeable, hashed.

    ``weights`` is :func:`state_digest` of the backbone (computed when not given): the
    weights themselves, so ``--weights none`` at two seeds are two keys.  ``part``
    describes a part of the backbone whose output is cached instead of the whole
    backbone's (a ``partial:K`` prefix); None for the whole backbone.
    """
    key = {
        "format": FORMAT,
        "arch": source.arch,
        "arch_options": source.arch_options,
        "weights": weights or state_digest(source.backbone),
        "preprocessing": source.preprocessing.to_dict(),
        "view": view.to_dict(),
        **({"part": part} if part is not None else {}),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class FeatureEntry:
    """One cached feature matrix."""

    name: str
    path: Path  # NAME.npy
    size: int  # bytes of all its files
    meta: dict[str, Any]
    last_used: float

    @property
    def sidecar(self) -> Path:
        return self.path.with_suffix(".json")

    @property
    def items_path(self) -> Path:
        return self.path.with_name(self.name + ".items.npy")

    def files(self) -> list[Path]:
        return [self.path, self.items_path, self.sidecar]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "size": self.size,
            "shape": self.meta.get("shape"),
            "source": self.meta.get("source"),
            "weights": self.meta.get("weights"),
            "view": self.meta.get("view"),
            "part": self.meta.get("part"),
            "created": self.meta.get("created"),
            "last_used": self.last_used,
        }


def _entries(folder: Path) -> Iterator[FeatureEntry | Path]:
    """Each entry of ``folder``, or the sidecar path of one that is damaged."""
    if not folder.is_dir():
        return
    for sidecar in sorted(folder.glob("*.json")):
        if sidecar.name.startswith("."):
            continue
        name = sidecar.stem
        npy = folder / f"{name}.npy"
        items = folder / f"{name}.items.npy"
        try:
            meta = json.loads(sidecar.read_text())
            n, d = (int(s) for s in meta["shape"])
            expected = {npy: 4 * n * d, items: 32 * n}
            sizes = {p: p.stat().st_size for p in expected}
            # .npy = header + data: the data part must be all there
            if any(sizes[p] < want or sizes[p] > want + 4096 for p, want in expected.items()):
                raise ValueError("file sizes do not match the sidecar")
            if meta.get("format") != FORMAT or meta.get("dtype") != "float32":
                raise ValueError("another format")
        except (OSError, ValueError, KeyError, TypeError):
            yield sidecar
            continue
        yield FeatureEntry(
            name=name,
            path=npy,
            size=sum(sizes.values()) + sidecar.stat().st_size,
            meta=meta,
            last_used=sidecar.stat().st_mtime,
        )


def _discard(sidecar: Path) -> None:
    name = sidecar.stem
    for p in (sidecar, sidecar.with_name(f"{name}.npy"), sidecar.with_name(f"{name}.items.npy")):
        with contextlib.suppress(OSError):
            p.unlink()


def list_features(cache: str | os.PathLike[str] | None = None) -> list[FeatureEntry]:
    """Every intact entry of the feature cache, least recently used first."""
    entries = [e for e in _entries(features_dir(cache)) if isinstance(e, FeatureEntry)]
    return sorted(entries, key=lambda e: e.last_used)


def clear_features(cache: str | os.PathLike[str] | None = None, *, yes: bool = False) -> list[Path]:
    """Delete every feature cache file (with ``yes``); return what was (or would be) deleted.

    Damaged entries and leftover temporary files go too.
    """
    folder = features_dir(cache)
    if not folder.is_dir():
        return []
    doomed = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and (p.suffix in (".npy", ".json") or p.name.endswith(".tmp"))
    )
    if yes:
        for p in doomed:
            p.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()
    return doomed


def _lookup(folder: Path, key: str, digests: np.ndarray) -> np.ndarray | None:
    """Rows for ``digests`` from an entry with ``key`` that holds them all, or None."""
    for entry in _entries(folder):
        if not isinstance(entry, FeatureEntry):
            log.warning("feature cache: removing damaged entry %s", entry)
            _discard(entry)
            continue
        if entry.meta.get("key") != key:
            continue
        try:
            held = np.load(entry.items_path, mmap_mode="r")
            feats = np.load(entry.path, mmap_mode="r")
            if feats.shape != tuple(entry.meta["shape"]) or feats.dtype != np.float32:
                raise ValueError("shape or dtype differ from the sidecar")
            row_of = {bytes(d): r for r, d in enumerate(held)}
            rows = [row_of.get(bytes(d)) for d in digests]
            if any(r is None for r in rows):
                continue
            out = np.asarray(feats[np.asarray(rows, dtype=np.int64)], dtype=np.float32)
        except (OSError, ValueError) as exc:
            log.warning("feature cache: removing damaged entry %s (%s)", entry.name, exc)
            _discard(entry.sidecar)
            continue
        with contextlib.suppress(OSError):
            os.utime(entry.sidecar)  # last used: eviction removes the oldest first
        return out
    return None


def _save_npy(dest: Path, array: np.ndarray) -> None:
    with atomic_path(dest) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


def _store(
    folder: Path, key: str, digests: np.ndarray, feats: np.ndarray, info: dict[str, Any]
) -> Path | None:
    """Write an entry (data first, sidecar last); then keep the folder under the cap."""
    cap = max_bytes()
    need = feats.nbytes + digests.nbytes
    if need > cap:
        log.info("feature cache: %d MB is over the cap (%s); not kept", need >> 20, ENV_MAX_GB)
        return None
    content = hashlib.sha256(b"".join(sorted(bytes(d) for d in digests))).hexdigest()
    name = f"{key[:16]}-{content[:16]}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _save_npy(folder / f"{name}.npy", np.ascontiguousarray(feats, dtype=np.float32))
        _save_npy(folder / f"{name}.items.npy", digests.astype(_DIGEST))
        meta = {
            "format": FORMAT,
            "key": key,
            "shape": list(feats.shape),
            "dtype": "float32",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **info,
        }
        atomic_write_json(folder / f"{name}.json", meta)
    except OSError as exc:
        log.warning("feature cache: cannot write to %s (%s); continuing without it", folder, exc)
        return None
    _evict(folder, cap, keep=name)
    return folder / f"{name}.npy"


def _evict(folder: Path, cap: int, *, keep: str) -> None:
    entries = [e for e in _entries(folder) if isinstance(e, FeatureEntry)]
    total = sum(e.size for e in entries)
    for entry in sorted(entries, key=lambda e: e.last_used):
        if total <= cap:
            break
        if entry.name == keep:
            continue
        log.info("feature cache: evicting %s (%d MB)", entry.name, entry.size >> 20)
        _discard(entry.sidecar)
        total -= entry.size


class _SeededView(Dataset[tuple[torch.Tensor, int]]):
    """An augmented view whose randomness depends on (seed, view, image content) only."""

    def __init__(self, base: ImageDataset, seeds: np.ndarray) -> None:
        self.base = base
        self.seeds = seeds

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        torch.manual_seed(int(self.seeds[i]))
        return self.base[i]


def _view_seeds(view: View, digests: np.ndarray) -> np.ndarray:
    out = np.empty(len(digests), dtype=np.int64)
    for i, d in enumerate(digests):
        h = hashlib.sha256(f"{view.seed}|{view.index}|".encode() + bytes(d)).digest()
        out[i] = int.from_bytes(h[:7], "little")
    return out


def extract(
    source: Source,
    data: LabeledData,
    view: View = EVAL_VIEW,
    *,
    device: torch.device,
    batch_size: int = 128,
    workers: int = 0,
    progress: bool = False,
    digests: np.ndarray | None = None,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    width: int | None = None,
) -> np.ndarray:
    """``[N, D]`` float32 outputs of ``source.backbone`` (eval mode, no gradients).

    ``forward`` (with ``width``, its output's size per image) runs instead of the
    backbone, which is still put in eval mode; each output row is flattened.

    The global random state is left as it was, so training afterwards draws the same
    dropout masks and shuffles as it would have without this call.
    """
    pre: Preprocessing = source.preprocessing
    transform = make_transform(
        pre, train=view.augmented, augment=view.augment, allow_hflip=view.allow_hflip
    )
    dataset: Dataset[Any] = ImageDataset(data, transform, pre.channels)
    if view.augmented:
        seeds = _view_seeds(view, digests if digests is not None else item_digests(data))
        dataset = _SeededView(dataset, seeds)  # type: ignore[arg-type]
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    backbone = source.backbone
    was_training = backbone.training
    run = forward if forward is not None else backbone
    out = np.empty((len(data), width or source.feature_dim), dtype=np.float32)
    row = 0
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        backbone.to(device).eval()
        try:
            for x, _ in bar(loader, desc="features", enabled=progress):
                f = run(x.to(device, non_blocking=True)).float().flatten(1).cpu().numpy()
                out[row : row + len(f)] = f
                row += len(f)
        finally:
            backbone.train(was_training)
    return out


def cached_features(
    source: Source,
    data: LabeledData,
    view: View = EVAL_VIEW,
    *,
    device: torch.device,
    cache: str | os.PathLike[str] | None = None,
    batch_size: int = 128,
    workers: int = 0,
    progress: bool = False,
    weights_digest: str | None = None,
    on_extract: Callable[[int], None] | None = None,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    item_shape: tuple[int, ...] | None = None,
    part: dict[str, Any] | None = None,
) -> tuple[np.ndarray, bool]:
    """``(features [N, D], hit)``: from the cache when an entry holds every image.

    Otherwise the backbone runs over the distinct images of ``data`` and the result is
    stored for next time.  ``on_extract(n)`` is called before ``n`` images are run.
    ``forward``, ``item_shape`` and ``part``: cache that part of the backbone instead
    (each row is its output for one image, ``item_shape`` flattened; ``part`` goes into
    the key and the sidecar).
    """
    digests = item_digests(data)
    key = model_key(source, view, weights=weights_digest, part=part)
    folder = features_dir(cache)
    if len(data):
        found = _lookup(folder, key, digests)
        if found is not None:
            return found, True
    unique, first, inverse = np.unique(digests, return_index=True, return_inverse=True)
    if on_extract is not None:
        on_extract(len(unique))
    feats = extract(
        source,
        data.subset(first, note="distinct images"),
        view,
        device=device,
        batch_size=batch_size,
        workers=workers,
        progress=progress,
        digests=unique,
        forward=forward,
        width=int(np.prod(item_shape)) if item_shape is not None else None,
    )
    if len(unique):
        _store(
            folder,
            key,
            unique,
            feats,
            {
                "source": source.spec,
                "arch": source.arch,
                "weights": source.weights.description,
                "preprocessing": source.preprocessing.to_dict(),
                "view": view.to_dict(),
                "data": data.spec,
                **({"part": part} if part is not None else {}),
                **({"item_shape": list(item_shape)} if item_shape is not None else {}),
            },
        )
    return feats[inverse.reshape(-1)], False

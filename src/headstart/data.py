"""Data: labelled images from a folder, a CSV or a built-in set, and how to feed them.

Spec forms (:func:`load_data`):

- a folder with one sub-folder per class (images found recursively inside each);
- a ``.csv`` file with a ``path,label`` header, paths relative to the CSV's folder;
- ``builtin:digits`` (scikit-learn's 8x8 digits) with options, e.g.
  ``builtin:digits?classes=0-4&per_class=10&seed=1`` or ``...&split=rest``.

Everything that can be wrong with the data is found at load time and reported by path,
row or option, before any training starts: every image file is opened and decoded by a
parallel pre-scan (:mod:`headstart.scan`); unreadable files stop the load (or, with
``skip_bad``, are left out and counted); the same picture under two labels is a label
conflict; the same picture twice under one label is a warning, and in both training and
validation it is reported as leakage (:func:`data_checks`).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from headstart._io import sha256_file
from headstart.errors import ConfigError, DataError
from headstart.registry import Registry
from headstart.scan import open_image, scan_images
from headstart.sources.base import Preprocessing

__all__ = [
    "AUGMENTS",
    "AUTO_AUGMENT",
    "DATASETS",
    "IMG_EXTENSIONS",
    "UNLABELLED",
    "BuiltinData",
    "ImageDataset",
    "Item",
    "LabeledData",
    "data_checks",
    "list_inputs",
    "load_data",
    "make_transform",
    "resolve_augment",
    "stratified_split",
    "to_model_mode",
]

_log = logging.getLogger(__name__)

# torchvision's list (torchvision.datasets.folder.IMG_EXTENSIONS), matched case-insensitively.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_HIDDEN_NAMES = ("__MACOSX",)
_MAX_LISTED = 10  # paths / rows named in one error message

UNLABELLED = -1  # the target of an item with no label (e.g. an image to predict)

# an image file, an in-memory (H, W) or (H, W, C) uint8 image, or a text (headstart.textdata)
Item = Path | np.ndarray | str


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in _HIDDEN_NAMES


def _images_under(folder: Path) -> list[Path]:
    """Image files anywhere below ``folder``, skipping hidden files and folders, sorted."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMG_EXTENSIONS
        and not any(_hidden(part) for part in p.relative_to(folder).parts)
        and p.is_file()
    )


def _listed(things: Sequence[object]) -> str:
    """``a, b, c`` with at most ``_MAX_LISTED`` shown and the count when more."""
    shown = ", ".join(str(t) for t in things[:_MAX_LISTED])
    return shown + (f", ... ({len(things)} in all)" if len(things) > _MAX_LISTED else "")


@dataclass(eq=False)  # eq would compare numpy arrays elementwise; identity is what we want
class LabeledData:
    """Items (image files or in-memory arrays) with integer targets into ``classes``.

    A target of ``UNLABELLED`` (-1) marks an item without a label (images to predict).
    ``note`` says how this set was cut from ``spec`` (empty for a whole data set).
    ``digests`` maps each checked image file to the digest of its decoded pixels
    (:class:`headstart.scan.ImageCheck`); ``skipped`` lists the ``(path, problem)`` of
    the files left out as unreadable or conflicting (``skip_bad``).
    """

    spec: str
    classes: list[str]
    items: list[Item]
    targets: np.ndarray
    root: Path | None = None
    allow_hflip: bool = True
    note: str = ""
    digests: dict[Path, str] = field(default_factory=dict, repr=False)
    skipped: list[tuple[str, str]] = field(default_factory=list, repr=False)
    _fingerprint: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.targets = np.asarray(self.targets, dtype=np.int64).reshape(-1)
        if len(self.targets) != len(self.items):
            raise ValueError(
                f"{len(self.items)} items but {len(self.targets)} targets in {self.spec}"
            )
        if len(self.targets) and not (
            self.targets.min() >= UNLABELLED and self.targets.max() < len(self.classes)
        ):
            raise ValueError(
                f"targets out of range({UNLABELLED}, {len(self.classes)}) in {self.spec}"
            )

    def __len__(self) -> int:
        return len(self.items)

    def subset(
        self, indices: Sequence[int] | np.ndarray, *, note: str | None = None
    ) -> LabeledData:
        """The items at ``indices``, with the same classes and spec.

        ``note`` (default ``"K of N items"``) is appended to this set's own note.
        """
        idx = [int(i) for i in np.asarray(indices, dtype=np.int64).reshape(-1)]
        what = note if note is not None else f"{len(idx)} of {len(self)} items"
        return replace(
            self,
            items=[self.items[i] for i in idx],
            targets=self.targets[np.asarray(idx, dtype=np.int64)],
            note=f"{self.note}; {what}" if self.note else what,
        )

    def name_of(self, i: int) -> str:
        """How item ``i`` is named in messages: its path, or ``spec[i]``."""
        item = self.items[i]
        return str(item) if isinstance(item, Path) else f"{self.spec}[{i}]"

    def load_image(self, i: int) -> Image.Image:
        """Item ``i`` opened and fully decoded, upright per its EXIF orientation.

        Raises :class:`DataError` naming the file when it cannot be read or has more
        pixels than :func:`headstart.scan.max_image_pixels` allows.
        """
        item = self.items[i]
        if isinstance(item, np.ndarray):
            return _array_to_image(item, self.name_of(i))
        return open_image(Path(item))

    def class_counts(self) -> dict[str, int]:
        labelled = self.targets[self.targets != UNLABELLED]
        counts = np.bincount(labelled, minlength=len(self.classes))
        return {c: int(counts[i]) for i, c in enumerate(self.classes)}

    def fingerprint(self) -> str:
        """SHA-256 over sorted (relative path or index, label, content hash) lines.

        Stable across runs and machines (paths are relative to ``root``, with ``/``);
        changes when any image's bytes or any label changes.  Computed once per object.
        """
        if self._fingerprint is None:
            lines = []
            for i, item in enumerate(self.items):
                if isinstance(item, Path):
                    name = (
                        item.relative_to(self.root).as_posix()
                        if self.root is not None and item.is_relative_to(self.root)
                        else item.name
                    )
                    try:
                        content = sha256_file(item)
                    except OSError as exc:
                        raise DataError(f"{item}: cannot read ({exc})") from exc
                else:
                    name = str(i)
                    arr = np.ascontiguousarray(item)
                    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
                    h.update(arr.tobytes())
                    content = h.hexdigest()
                t = int(self.targets[i])
                label = self.classes[t] if t != UNLABELLED else ""
                lines.append(f"{name}\t{label}\t{content}\n")
            digest = hashlib.sha256()
            for line in sorted(lines):
                digest.update(line.encode("utf-8"))
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        """What a run records about its data: spec, size, classes, counts, fingerprint."""
        out: dict[str, Any] = {
            "spec": self.spec,
            "n_items": len(self),
            "classes": list(self.classes),
            "class_counts": self.class_counts(),
            "fingerprint": self.fingerprint(),
        }
        if self.note:
            out["note"] = self.note
        return out


def _array_to_image(arr: np.ndarray, name: str) -> Image.Image:
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
        raise DataError(f"{name}: in-memory image must be uint8 (H,W) or (H,W,C), got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]  # PIL has no (H, W, 1) mode
    if arr.ndim == 3 and arr.shape[2] not in (3, 4):
        raise DataError(f"{name}: in-memory image has {arr.shape[2]} channels; expected 1, 3 or 4")
    return Image.fromarray(np.ascontiguousarray(arr))


# --------------------------------------------------------------------------- loading


def load_data(
    spec: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
    check_images: bool = True,
    skip_bad: bool = False,
    progress: bool = False,
) -> LabeledData:
    """Load a labelled data set from ``spec`` (folder, CSV or ``builtin:NAME?options``).

    With ``classes`` (a trained run's), class indices follow that list: a label not in it
    is an error, a class in it with no data is allowed.  With ``check_images`` every
    image file is opened and fully decoded now, in parallel (``progress`` shows a bar),
    so a bad file is found before training: unreadable files (empty, truncated, corrupt,
    not an image, too many pixels) and the same picture under two labels are an error
    listing them, or with ``skip_bad`` are left out with a warning and recorded in
    ``skipped``.  The same picture twice under one label is a warning.

    Raises :class:`DataError` naming the path, row or option at fault.
    """
    text = os.fspath(spec)
    known = list(classes) if classes is not None else None
    if text.startswith("builtin:"):
        data = _load_builtin(text)
        if known is not None:
            data = _reindex(data, known, lambda label: f"class {label!r} of {text}")
        return data
    path = Path(text).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        data = _load_folder(path, allow_empty=known is not None)
        if known is not None:
            data = _reindex(data, known, lambda label: f"class folder {path / label}")
    elif path.suffix.lower() == ".csv":
        data = _load_csv(path)
        if known is not None:
            data = _reindex(data, known, lambda label: f"label {label!r} in {path}")
    else:
        raise DataError(
            f"{path}: not a data set; give a folder (one sub-folder per class), a .csv file "
            "with path,label columns, or builtin:NAME (" + ", ".join(DATASETS.names()) + ")"
        )
    if check_images:
        data = _checked(data, skip_bad=skip_bad, progress=progress, allow_empty=known is not None)
    _log.debug("loaded %s: %d items, %d classes", data.spec, len(data), len(data.classes))
    return data


def _reindex(data: LabeledData, classes: list[str], where: Callable[[str], str]) -> LabeledData:
    """Renumber targets to follow ``classes``; every label in the data must be in it."""
    index = {c: i for i, c in enumerate(classes)}
    present = [data.classes[t] for t in np.unique(data.targets) if t != UNLABELLED]
    unknown = [c for c in present if c not in index]
    if unknown:
        raise DataError(
            f"{_listed([where(c) for c in unknown])}: not a class of this model; "
            f"valid classes: {', '.join(classes)}"
        )
    remap = np.array([index.get(c, UNLABELLED) for c in data.classes], dtype=np.int64)
    targets = np.where(data.targets == UNLABELLED, UNLABELLED, remap[np.maximum(data.targets, 0)])
    return replace(data, classes=list(classes), targets=targets)


def _load_folder(root: Path, *, allow_empty: bool) -> LabeledData:
    try:
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not _hidden(p.name))
    except OSError as exc:
        raise DataError(f"{root}: cannot list folder ({exc})") from exc
    if not class_dirs:
        loose = " (it holds images directly: move them into class folders)"
        has_loose = any(p.suffix.lower() in IMG_EXTENSIONS for p in root.iterdir())
        raise DataError(
            f"no classes: expected one sub-folder per class in {root}"
            + (loose if has_loose else "")
        )
    items: list[Item] = []
    targets: list[int] = []
    empty: list[Path] = []
    for idx, folder in enumerate(class_dirs):
        files = _images_under(folder)
        if not files:
            empty.append(folder)
        items.extend(files)
        targets.extend([idx] * len(files))
    if empty and not allow_empty:
        raise DataError(
            f"class folder(s) with no images: {_listed(empty)}; "
            f"image extensions: {', '.join(IMG_EXTENSIONS)}"
        )
    return LabeledData(
        spec=str(root),
        classes=[p.name for p in class_dirs],
        items=items,
        targets=np.array(targets, dtype=np.int64),
        root=root,
    )


def _load_csv(path: Path) -> LabeledData:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read CSV ({exc})") from exc
    # Rows are numbered as a spreadsheet shows them: the header is row 1; blank rows keep
    # their number but are skipped.
    numbered = [(n, row) for n, row in enumerate(rows, start=1) if any(c.strip() for c in row)]
    if not numbered:
        raise DataError(f"{path}: empty CSV; expected a header 'path,label' and one row per image")
    header_line, header_row = numbered[0]
    header = [h.strip().lower() for h in header_row]
    if "path" not in header or "label" not in header:
        raise DataError(
            f"{path}: needs columns 'path' and 'label'; found: "
            + ", ".join(repr(h.strip()) for h in header_row)
        )
    pi, li = header.index("path"), header.index("label")
    body = numbered[1:]
    if not body:
        raise DataError(f"{path}: no rows after the header (row {header_line})")
    problems: dict[str, list[str]] = {
        "empty path": [],
        "empty label": [],
        "missing file": [],
        "file listed again": [],
    }
    pairs: list[tuple[Path, str]] = []
    first_row: dict[Path, int] = {}
    for line, row in body:
        cell = row[pi].strip() if len(row) > pi else ""
        label = row[li].strip() if len(row) > li else ""
        file = Path(cell).expanduser()
        file = Path(os.path.normpath(file if file.is_absolute() else path.parent / file))
        if not cell:
            problems["empty path"].append(str(line))
        elif not label:
            problems["empty label"].append(str(line))
        elif file in first_row:
            problems["file listed again"].append(f"{line} ({cell}, first on row {first_row[file]})")
        elif not file.is_file():
            problems["missing file"].append(f"{line} ({cell})")
        else:
            first_row[file] = line
            pairs.append((file, label))
    found = [f"{kind} on row(s) {_listed(lines)}" for kind, lines in problems.items() if lines]
    if found:
        raise DataError(f"{path}: " + "; ".join(found))
    classes = sorted({label for _, label in pairs})
    index = {c: i for i, c in enumerate(classes)}
    return LabeledData(
        spec=str(path),
        classes=classes,
        items=[f for f, _ in pairs],
        targets=np.array([index[label] for _, label in pairs], dtype=np.int64),
        root=path.parent,
    )


def _checked(
    data: LabeledData, *, skip_bad: bool, progress: bool, allow_empty: bool
) -> LabeledData:
    """``data`` with every image file decoded once (see :mod:`headstart.scan`).

    Unreadable files and label conflicts raise one :class:`DataError` listing them, or
    with ``skip_bad`` are dropped (and recorded in ``skipped``) with a warning; a class
    left with no images is then an error unless ``allow_empty``.
    """
    where = {item: i for i, item in enumerate(data.items) if isinstance(item, Path)}
    checks = scan_images(list(where), progress=progress)
    bad = [c for c in checks if not c.ok]
    for c in bad:
        _log.warning("%s: %s", c.path, c.problem)
    if bad and not skip_bad:
        raise DataError(
            f"{len(bad)} unreadable image(s): {_listed([f'{c.path} ({c.problem})' for c in bad])}"
            "; fix or remove them, or pass --skip-bad to leave them out"
        )
    digests = {c.path: c.digest for c in checks if c.ok}
    conflicts = _label_conflicts(data, digests)
    if conflicts and not skip_bad:
        raise DataError(
            f"{len(conflicts)} image(s) appear under more than one label: "
            + _listed([" = ".join(f"{p} ({label})" for p, label in g) for g in conflicts])
            + "; one of the labels is wrong: remove the wrong copies, or pass --skip-bad "
            "to leave out every copy"
        )
    skipped = [(str(c.path), c.problem) for c in bad]
    for group in conflicts:
        labels = ", ".join(sorted({label for _, label in group}))
        skipped += [(str(p), f"same picture under labels {labels}") for p, _ in group]
    if skipped:
        _log.warning(
            "%s: left out %d of %d image(s) (--skip-bad): %d unreadable, %d with conflicting "
            "labels",
            data.spec,
            len(skipped),
            len(data),
            len(bad),
            len(skipped) - len(bad),
        )
        drop = {where[Path(p)] for p, _ in skipped}
        keep = [i for i in range(len(data)) if i not in drop]
        data = replace(
            data,
            items=[data.items[i] for i in keep],
            targets=data.targets[np.asarray(keep, dtype=np.int64)],
        )
        for p, _ in skipped:
            digests.pop(Path(p), None)
        emptied = [c for c, n in data.class_counts().items() if n == 0]
        if emptied and not allow_empty:
            raise DataError(
                f"{data.spec}: no usable image left in class(es) {_listed(emptied)} after "
                "--skip-bad; add images or remove the class"
            )
    data = replace(data, digests=digests, skipped=skipped)
    groups = _duplicate_groups(data)
    if groups:
        _log.warning(
            "%s: %d picture(s) appear more than once under the same label (%d extra copies), "
            "e.g. %s; duplicates weigh twice in training and may leak into validation",
            data.spec,
            len(groups),
            sum(len(g) - 1 for g in groups),
            " = ".join(str(p) for p in groups[0]),
        )
    return data


def _label_of(data: LabeledData, i: int) -> str:
    t = int(data.targets[i])
    return data.classes[t] if t != UNLABELLED else ""


def _by_digest(data: LabeledData) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(data.items):
        digest = data.digests.get(item) if isinstance(item, Path) else None
        if digest:
            groups[digest].append(i)
    return groups


def _label_conflicts(data: LabeledData, digests: dict[Path, str]) -> list[list[tuple[Path, str]]]:
    """Groups of files with the same pixels and more than one label, as (path, label)."""
    groups = _by_digest(replace(data, digests=digests))
    out = []
    for members in groups.values():
        labels = {_label_of(data, i) for i in members} - {""}
        if len(labels) > 1:
            out.append([(_path(data.items[i]), _label_of(data, i)) for i in members])
    return out


def _path(item: Item) -> Path:
    assert isinstance(item, Path)  # only image files have digests
    return item


def _duplicate_groups(data: LabeledData) -> list[list[Path]]:
    """Groups of two or more files with the same pixels, in item order."""
    return [
        [_path(data.items[i]) for i in members]
        for members in _by_digest(data).values()
        if len(members) > 1
    ]


def _shown(data: LabeledData, path: Path) -> str:
    root = data.root
    return path.relative_to(root).as_posix() if root and path.is_relative_to(root) else str(path)


def data_checks(
    data: LabeledData, train: LabeledData, val: LabeledData | None, *, examples: int = 5
) -> dict[str, Any]:
    """What the pre-scan found, for a run's record: checked, skipped, duplicates, leakage.

    ``data`` is the whole loaded set, ``train``/``val`` the parts trained and validated
    on (``val`` may come from another folder).  Every skipped file is listed with its
    problem; duplicates are counted, with up to ``examples`` groups.  Leakage is the
    number of validation items whose decoded pixels equal a training item's, with up to
    ``examples`` (train, validation) pairs; it is logged as a warning, and is None when
    there is no validation set or it was not checked.  Only image files are checked
    (in-memory arrays are not): ``checked`` says how many were.
    """
    groups = _duplicate_groups(data)
    checked = len(data.digests) + len(data.skipped)
    skipped = list(data.skipped)
    if val is not None and val.digests is not data.digests:  # loaded on its own (--val)
        checked += len(val.digests) + len(val.skipped)
        skipped += val.skipped
    out: dict[str, Any] = {
        "checked": checked,
        "skipped": {
            "count": len(skipped),
            "files": [{"path": p, "problem": why} for p, why in skipped],
        },
        "duplicates": {
            "groups": len(groups),
            "extra_copies": sum(len(g) - 1 for g in groups),
            "examples": [[_shown(data, p) for p in g] for g in groups[:examples]],
        },
        "leakage": None,
    }
    if val is not None and train.digests and val.digests:  # else: not checked (arrays)
        in_train: dict[str, Path] = {}
        for item in train.items:
            if isinstance(item, Path) and item in train.digests:
                in_train.setdefault(train.digests[item], item)
        pairs = [
            (in_train[val.digests[item]], item)
            for item in val.items
            if isinstance(item, Path) and val.digests.get(item) in in_train
        ]
        out["leakage"] = {
            "count": len(pairs),
            "of": len(val),
            "examples": [[_shown(train, a), _shown(val, b)] for a, b in pairs[:examples]],
        }
        if pairs:
            _log.warning(
                "leakage: %d of %d validation image(s) also in training (same pixels), e.g. "
                "%s = %s; validation scores will be too high: remove the copies",
                len(pairs),
                len(val),
                pairs[0][0],
                pairs[0][1],
            )
    return out


# --------------------------------------------------------------------------- built-in data


@dataclass(frozen=True)
class BuiltinData:
    """A built-in data set: ``load(options, spec)`` and the option names it accepts."""

    load: Callable[[dict[str, str], str], LabeledData]
    options: tuple[str, ...]
    summary: str


DATASETS: Registry[BuiltinData] = Registry("built-in data set", ConfigError)


def _load_builtin(spec: str) -> LabeledData:
    name, _, query = spec[len("builtin:") :].partition("?")
    if name not in DATASETS:
        raise DataError(
            f"{spec}: unknown built-in data set {name!r}; valid: {', '.join(DATASETS.names())}"
        )
    entry = DATASETS.get(name)
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise DataError(
            f"{spec}: options must look like ?key=value&key=value; valid keys: "
            f"{', '.join(entry.options)}"
        ) from None
    opts = dict(pairs)
    unknown = [k for k, _ in pairs if k not in entry.options]
    if unknown:
        raise DataError(
            f"{spec}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(entry.options)}"
        )
    return entry.load(opts, spec)


def _parse_classes(value: str, valid: Sequence[str], *, spec: str) -> list[str]:
    """``0-4`` or ``0,2,5-7`` -> class names, in the order of ``valid``."""
    chosen: set[str] = set()
    for part in value.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if m and int(m[1]) > int(m[2]):
            raise DataError(f"{spec}: classes={value!r}: range {part!r} runs backwards")
        names = [str(i) for i in range(int(m[1]), int(m[2]) + 1)] if m else [part]
        for n in names:
            if n not in valid:
                raise DataError(
                    f"{spec}: classes={value!r}: no class {n!r}; valid: {', '.join(valid)} "
                    "(ranges like 0-4 and lists like 0,2,5-7)"
                )
            chosen.add(n)
    return [c for c in valid if c in chosen]


def _int_option(opts: dict[str, str], key: str, *, spec: str, minimum: int) -> int | None:
    if key not in opts:
        return None
    try:
        value = int(opts[key])
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise DataError(f"{spec}: {key}={opts[key]!r}; valid: a whole number >= {minimum}")
    return value


_DIGITS_SPLITS = ("chosen", "rest")


def _load_digits(opts: dict[str, str], spec: str) -> LabeledData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # values are 0..16; scale to the 0..255 of an ordinary 8-bit image
    images = np.clip(np.round(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    all_classes = [str(i) for i in range(10)]
    classes = _parse_classes(opts.get("classes", "0-9"), all_classes, spec=spec)
    per_class = _int_option(opts, "per_class", spec=spec, minimum=1)
    seed = _int_option(opts, "seed", spec=spec, minimum=0) or 0
    split = opts.get("split", "chosen")
    if split not in _DIGITS_SPLITS:
        raise DataError(f"{spec}: split={split!r}; valid: {', '.join(_DIGITS_SPLITS)}")
    if split == "rest" and per_class is None:
        raise DataError(f"{spec}: split=rest needs per_class=N (the rest after N per class)")
    picked: list[int] = []
    targets: list[int] = []
    for idx, name in enumerate(classes):
        members = np.flatnonzero(bunch.target == int(name))
        if per_class is not None:
            if per_class > len(members):
                raise DataError(
                    f"{spec}: per_class={per_class} but class {name} has {len(members)} images"
                )
            # One generator per class: a class's selection does not depend on which other
            # classes were asked for, so classes=0-4 and classes=0-9 agree on 0..4.
            rng = np.random.default_rng([seed, int(name)])
            chosen = np.sort(rng.choice(members, size=per_class, replace=False))
            members = chosen if split == "chosen" else np.setdiff1d(members, chosen)
        picked.extend(int(m) for m in members)
        targets.extend([idx] * len(members))
    return LabeledData(
        spec=spec,
        classes=classes,
        items=[np.ascontiguousarray(images[i]) for i in picked],
        targets=np.array(targets, dtype=np.int64),
        allow_hflip=False,  # a mirrored digit is another symbol (or none)
    )


DATASETS.register(
    "digits",
    BuiltinData(
        load=_load_digits,
        options=("classes", "per_class", "seed", "split"),
        summary="scikit-learn's 1797 handwritten digits, 8x8 grayscale, 10 classes",
    ),
)


# --------------------------------------------------------------------------- inputs, splits


def list_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Image files for ``predict``: files as given, folders searched recursively.

    Returns the files sorted, each once.  Raises :class:`DataError` for a missing path or
    a folder without images.
    """
    if not inputs:
        raise DataError("no inputs given; pass image files or folders")
    found: set[Path] = set()
    for given in inputs:
        path = Path(given).expanduser()
        if not path.exists():
            raise DataError(f"{path}: no such file or folder")
        if path.is_dir():
            images = _images_under(path)
            if not images:
                raise DataError(
                    f"{path}: folder has no images (extensions: {', '.join(IMG_EXTENSIONS)})"
                )
            found.update(images)
        else:
            found.add(path)
    return sorted(found)


def stratified_split(
    targets: np.ndarray,
    *,
    val_fraction: float,
    seed: int,
    classes: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, validation) index arrays, repeatable with ``seed``.

    The validation set gets ``max(round(val_fraction * n), n_classes)`` examples, so at
    least one of every class.  ``val_fraction == 0`` gives (all, empty).  ``classes``
    (optional) names classes in messages.  Raises :class:`DataError` when a class has
    fewer than 2 examples or the set is too small to split.
    """
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    n = len(targets)
    if val_fraction == 0:
        return np.arange(n, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if not 0 < val_fraction < 1:
        raise ConfigError(f"--val-fraction must be in [0, 1) (got {val_fraction})")
    labels, counts = np.unique(targets, return_counts=True)

    def name(t: int) -> str:
        return repr(classes[t]) if classes is not None and 0 <= t < len(classes) else f"#{t}"

    few = [f"{name(int(t))} ({c})" for t, c in zip(labels, counts, strict=True) if c < 2]
    if few:
        raise DataError(
            f"class(es) with fewer than 2 examples: {_listed(few)}; cannot hold one out for "
            "validation: add more data, or use --val-fraction 0"
        )
    n_val = max(round(val_fraction * n), len(labels))
    if n - n_val < len(labels):
        raise DataError(
            f"{n} examples are too few to hold out {val_fraction:.0%} for validation with all "
            f"{len(labels)} classes in both parts; add more data, or use --val-fraction 0"
        )
    from sklearn.model_selection import train_test_split

    train_idx, val_idx = train_test_split(
        np.arange(n, dtype=np.int64),
        test_size=n_val,
        stratify=targets,
        random_state=seed,
        shuffle=True,
    )
    return np.sort(train_idx), np.sort(val_idx)


# --------------------------------------------------------------------------- transforms

_INTERPOLATION = {
    "nearest": T.InterpolationMode.NEAREST,
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
    "box": T.InterpolationMode.BOX,
    "hamming": T.InterpolationMode.HAMMING,
    "lanczos": T.InterpolationMode.LANCZOS,
}
AUGMENTS = ("light", "none")
AUTO_AUGMENT = "auto"  # --augment auto: none for linear, light when the backbone trains


def resolve_augment(augment: str, strategy: str) -> str:
    """``--augment`` as it applies to ``strategy``: ``auto`` becomes ``none`` for
    ``linear`` and ``light`` for the strategies that train the backbone.

    ``linear`` follows the linear-evaluation protocol (Kornblith, Shlens & Le, 2019; the
    linear probes of CLIP): the head is fitted on the features of un-augmented images, so
    the frozen backbone runs once (the feature cache) and the head comes out the same with
    or without the cache.  Fine-tuning a backbone on a small data set needs augmentation
    against over-fitting, hence ``light`` there.
    """
    if augment == AUTO_AUGMENT:
        return "none" if strategy == "linear" else "light"
    if augment not in AUGMENTS:
        raise ConfigError(f"--augment {augment!r}; valid: {AUTO_AUGMENT}, {', '.join(AUGMENTS)}")
    return augment


_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def to_model_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL image to what the model takes: ``RGB`` (3 channels) or ``L`` (1).

    Transparency is composed over white; 16-bit images are scaled to 8 bits (a 32-bit
    ``I`` image is taken as 8-bit when no value exceeds 255, 16-bit when none exceeds
    65535, else scaled by its maximum); a float ``F`` image is taken as 0..1 when no value
    exceeds 1, else like ``I``; palette, CMYK and the other modes go through PIL's own
    conversion.  Raises :class:`DataError` for a mode PIL cannot convert.
    """
    if channels not in (1, 3):
        raise ConfigError(f"images can be given to a model as 1 or 3 channels, not {channels}")
    want = "RGB" if channels == 3 else "L"
    if img.mode in (*_SIXTEEN_BIT, "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        high = float(arr.max(initial=0))
        if img.mode in _SIXTEEN_BIT:
            top = 65535.0
        elif img.mode == "F" and high <= 1.0:
            top = 1.0
        else:
            top = 255.0 if high <= 255 else 65535.0 if high <= 65535 else high
        img = Image.fromarray(np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8))
    elif img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    ):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    if img.mode == want:
        return img
    try:
        return img.convert(want)
    except ValueError as exc:
        raise DataError(f"cannot convert a {img.mode} image to {want} ({exc})") from exc


def make_transform(
    pre: Preprocessing, *, train: bool, augment: str = "light", allow_hflip: bool = True
) -> Callable[[Image.Image], torch.Tensor]:
    """The source's preprocessing as a PIL -> tensor transform.

    Evaluation (and ``augment="none"``): resize to ``size / crop_pct`` (short side, for a
    square input), centre-crop ``size``, normalise.  Training with ``augment="light"``:
    a mild random resized crop, a horizontal flip when ``allow_hflip``, normalise.
    Give it images already passed through :func:`to_model_mode`.
    """
    if augment not in AUGMENTS:
        raise ConfigError(f"--augment {augment!r}; valid: {', '.join(AUGMENTS)}")
    if pre.interpolation not in _INTERPOLATION:
        raise ConfigError(
            f"interpolation {pre.interpolation!r}; valid: {', '.join(_INTERPOLATION)}"
        )
    interpolation = _INTERPOLATION[pre.interpolation]
    _, height, width = pre.input_size
    size = (height, width)
    normalize = [T.ToTensor(), T.Normalize(pre.mean, pre.std)]
    if train and augment == "light":
        steps: list[Any] = [
            T.RandomResizedCrop(
                size, scale=(0.8, 1.0), ratio=(0.9, 1.1), interpolation=interpolation
            )
        ]
        if allow_hflip:
            steps.append(T.RandomHorizontalFlip())
        return T.Compose(steps + normalize)
    # timm's convention: a square input resizes the short side, keeping the aspect ratio.
    resize: int | tuple[int, int] = (
        math.floor(height / pre.crop_pct)
        if height == width
        else (math.floor(height / pre.crop_pct), math.floor(width / pre.crop_pct))
    )
    return T.Compose(
        [T.Resize(resize, interpolation=interpolation), T.CenterCrop(size), *normalize]
    )


class ImageDataset(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    """``(tensor, target)`` pairs: each image decoded, converted and transformed.

    Holds only plain data (paths or arrays, a transform), so it pickles into
    DataLoader worker processes.
    """

    def __init__(
        self,
        data: LabeledData,
        transform: Callable[[Image.Image], torch.Tensor],
        channels: int,
        indices: Sequence[int] | None = None,
    ) -> None:
        self.data = data
        self.transform = transform
        self.channels = channels
        self.indices = (
            list(range(len(data)))
            if indices is None
            else [int(i) for i in np.asarray(indices).reshape(-1)]
        )

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = self.indices[i]
        img = self.data.load_image(j)
        try:
            img = to_model_mode(img, self.channels)
        except DataError as exc:
            raise DataError(f"{self.data.name_of(j)}: {exc}") from exc
        return self.transform(img), int(self.data.targets[j])

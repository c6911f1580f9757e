"""Labelled images from a folder, a CSV or a built-in set (:func:`load_data`).

Spec forms (:func:`load_data`):

- a folder with one sub-folder per class (images found recursively inside each);
- a ``.csv`` file with a ``path,label`` header (``file``, ``filename`` or ``image`` for
  ``path``; ``,``, ``;`` or tab between fields), paths relative to the CSV's folder;
- ``builtin:digits`` (scikit-learn's 8x8 digits) with options, e.g.
  ``builtin:digits?classes=0-4&per_class=10&seed=1`` or ``...&split=rest``.

Everything that can be wrong with the data is found at load time and reported by path,
row or option, before any training starts: every image file is opened and decoded by a
parallel pre-scan (:mod:`headstart.data.scan`); unreadable files stop the load (or, with
``skip_bad``, are left out and counted); the same picture under two labels is a label
conflict; the same picture twice under one label is a warning, and in both training and
validation it is reported as leakage (:func:`data_checks`).
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np

from headstart.data.checks import _duplicate_groups, _label_conflicts
from headstart.data.csvfiles import csv_rows, path_column
from headstart.data.labelled import (
    IMG_EXTENSIONS,
    UNLABELLED,
    Item,
    LabeledData,
    _hidden,
    _images_under,
    _listed,
)
from headstart.data.scan import scan_images
from headstart.errors import ConfigError, DataError
from headstart.registry import Registry

_log = logging.getLogger(__name__)


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
    elif path.suffix.lower() in (".csv", ".tsv"):
        data = _load_csv(path)
        if known is not None:
            data = _reindex(data, known, lambda label: f"label {label!r} in {path}")
    else:
        raise DataError(
            f"{path}: not a data set; give a folder (one sub-folder per class), a .csv (or "
            ".tsv) file with path,label columns, or builtin:NAME ("
            + ", ".join(DATASETS.names())
            + ")"
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
        with csv_rows(path) as reader:
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read CSV ({exc})") from exc
    # Rows are numbered as a spreadsheet shows them: the header is row 1; blank rows keep
    # their number but are skipped.
    numbered = [(n, row) for n, row in enumerate(rows, start=1) if any(c.strip() for c in row)]
    if not numbered:
        raise DataError(f"{path}: empty CSV; expected a header 'path,label' and one row per image")
    header_line, header_row = numbered[0]
    header = [h.strip().lower() for h in header_row]
    found_pi = path_column(header_row)
    if found_pi is None or "label" not in header:
        raise DataError(
            f"{path}: the header must name the image column 'path' and the label column "
            f"'label' (found: {', '.join(h.strip() for h in header_row)})"
        )
    pi, li = found_pi, header.index("label")
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
        elif not file.is_file() and not file.is_symlink():  # a bad link: the scan says why
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
    """``data`` with every image file decoded once (see :mod:`headstart.data.scan`).

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

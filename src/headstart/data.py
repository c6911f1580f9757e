"""Data: labelled images from a folder, a CSV or a built-in set, and how to feed them.

Spec forms (:func:`load_data`):

- a folder with one sub-folder per class (images found recursively inside each);
- a ``.csv`` file with a ``path,label`` header, paths relative to the CSV's folder;
- ``builtin:digits`` (scikit-learn's 8x8 digits) with options, e.g.
  ``builtin:digits?classes=0-4&per_class=10&seed=1`` or ``...&split=rest``.

Everything that can be wrong with the data is found at load time and reported by path,
row or option, before any training starts.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import transforms as T

from headstart._io import sha256_file
from headstart.errors import ConfigError, DataError
from headstart.registry import Registry
from headstart.sources.base import Preprocessing

__all__ = [
    "AUGMENTS",
    "DATASETS",
    "IMG_EXTENSIONS",
    "UNLABELLED",
    "BuiltinData",
    "ImageDataset",
    "Item",
    "LabeledData",
    "list_inputs",
    "load_data",
    "make_transform",
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
    """

    spec: str
    classes: list[str]
    items: list[Item]
    targets: np.ndarray
    root: Path | None = None
    allow_hflip: bool = True
    note: str = ""
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

        Raises :class:`DataError` naming the file when it cannot be read.
        """
        item = self.items[i]
        if isinstance(item, np.ndarray):
            return _array_to_image(item, self.name_of(i))
        try:
            with Image.open(item) as opened:
                opened.load()
            img: Image.Image = opened
            # Phone photos are often stored sideways with an EXIF flag saying so.
            if img.getexif().get(0x0112, 1) != 1:
                img = ImageOps.exif_transpose(img)
        except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ...)
            raise DataError(f"{item}: unreadable image ({_first_line(exc)})") from exc
        return img

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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:120] if text else "") or type(exc).__name__


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
) -> LabeledData:
    """Load a labelled data set from ``spec`` (folder, CSV or ``builtin:NAME?options``).

    With ``classes`` (a trained run's), class indices follow that list: a label not in it
    is an error, a class in it with no data is allowed.  With ``check_images`` every
    image file is opened and verified now, so a bad file is found before training.

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
        _check_images(data.items)
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
    # Line numbers count the header as line 1; blank lines keep their number but are skipped.
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
        raise DataError(f"{path}: no rows after the header (line {header_line})")
    problems: dict[str, list[str]] = {"empty path": [], "empty label": [], "missing file": []}
    pairs: list[tuple[Path, str]] = []
    for line, row in body:
        cell = row[pi].strip() if len(row) > pi else ""
        label = row[li].strip() if len(row) > li else ""
        file = Path(cell).expanduser()
        file = file if file.is_absolute() else path.parent / file
        if not cell:
            problems["empty path"].append(str(line))
        elif not label:
            problems["empty label"].append(str(line))
        elif not file.is_file():
            problems["missing file"].append(f"{line} ({cell})")
        else:
            pairs.append((file, label))
    found = [f"{kind} on line(s) {_listed(lines)}" for kind, lines in problems.items() if lines]
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


def _check_images(items: Sequence[Item]) -> None:
    """Open and verify every image file; raise one error listing the bad ones by path."""
    bad: list[str] = []
    for item in items:
        if not isinstance(item, Path):
            continue
        try:
            with Image.open(item) as img:
                img.verify()
        except Exception as exc:  # any failure here means the file cannot be used
            bad.append(f"{item} ({_first_line(exc)})")
    if bad:
        raise DataError(f"{len(bad)} unreadable image(s): {_listed(bad)}; fix or remove them")


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
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def to_model_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL image to what the model takes: ``RGB`` (3 channels) or ``L`` (1).

    Transparency is composed over white; 16-bit images are scaled to 8 bits (a 32-bit
    ``I`` image is taken as 16-bit when any value exceeds 255); palette, CMYK and the
    other modes go through PIL's own conversion.  Raises :class:`DataError` for a mode
    PIL cannot convert.
    """
    if channels not in (1, 3):
        raise ConfigError(f"images can be given to a model as 1 or 3 channels, not {channels}")
    want = "RGB" if channels == 3 else "L"
    if img.mode in (*_SIXTEEN_BIT, "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode in _SIXTEEN_BIT or arr.max(initial=0) > 255 else 255.0
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

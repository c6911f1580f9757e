"""Labelled data: items (image paths or in-memory arrays, or texts) with class indices, the
one type every loader, split and cache takes; and the stratified split.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from headstart._io import sha256_file
from headstart.data.scan import open_image
from headstart.errors import ConfigError, DataError

# torchvision's list (torchvision.datasets.folder.IMG_EXTENSIONS), matched case-insensitively.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


_HIDDEN_NAMES = ("__MACOSX",)


_MAX_LISTED = 10  # paths / rows named in one error message


UNLABELLED = -1  # the target of an item with no label (e.g. an image to predict)


# an image file, an in-memory (H, W) or (H, W, C) uint8 image, or a text (headstart.data.texts)
Item = Path | np.ndarray | str


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in _HIDDEN_NAMES


def _images_under(folder: Path) -> list[Path]:
    """Image files anywhere below ``folder``, skipping hidden files and folders, sorted.

    A symlink with an image's name that leads nowhere (a loop, a target that is gone) is
    listed too: the pre-scan names it as a bad file rather than it vanishing silently."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMG_EXTENSIONS
        and not any(_hidden(part) for part in p.relative_to(folder).parts)
        and (p.is_file() or (p.is_symlink() and not p.is_dir()))
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
    (:class:`headstart.data.scan.ImageCheck`); ``skipped`` lists the ``(path, problem)`` of
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
    # what the items are: "images" here, "texts" for headstart.data.texts.TextData; a
    # source's inputs (headstart.sources.inputs) check it against what they take
    kind: ClassVar[str] = "images"

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
        pixels than :func:`headstart.data.scan.max_image_pixels` allows.
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


def list_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Image files for ``predict``: files as given, folders searched recursively.

    Returns the files in the order given (a folder's images sorted in its place), each
    once, where it first appears: ``predict a.png b.png`` labels a then b, as ``ls`` would
    not.  Raises :class:`DataError` for a missing path or a folder without images.
    """
    if not inputs:
        raise DataError("no inputs given; pass image files or folders")
    found: dict[Path, None] = {}  # ordered, each once
    for given in inputs:
        path = Path(given).expanduser()
        if not path.exists() and not path.is_symlink():  # a bad link: the scan says why
            raise DataError(f"{path}: no such file or folder")
        if path.is_dir():
            images = _images_under(path)
            if not images:
                raise DataError(
                    f"{path}: folder has no images (extensions: {', '.join(IMG_EXTENSIONS)})"
                )
            found.update(dict.fromkeys(images))
        else:
            found[path] = None
    return list(found)


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


def _array_to_image(arr: np.ndarray, name: str) -> Image.Image:
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
        raise DataError(f"{name}: in-memory image must be uint8 (H,W) or (H,W,C), got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]  # PIL has no (H, W, 1) mode
    if arr.ndim == 3 and arr.shape[2] not in (3, 4):
        raise DataError(f"{name}: in-memory image has {arr.shape[2]} channels; expected 1, 3 or 4")
    return Image.fromarray(np.ascontiguousarray(arr))

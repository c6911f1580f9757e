"""Checks of labelled data before training: the same image under two labels, duplicates,
and the same image in the training and the validation split (leakage).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

from headstart.data.labelled import UNLABELLED, Item, LabeledData

_log = logging.getLogger(__name__)


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

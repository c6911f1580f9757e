"""CSV and TSV files, read one way by the image and the text loaders.

The delimiter is the file's own: a ``.tsv`` is tab-separated, a ``.csv`` is told by its
header line (``,``, ``;`` as spreadsheets in many locales write it, or a tab).  A field
may be of any length (the ``csv`` module stops at 131,072 characters by default; a long
document is one field).
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["DELIMITERS", "PATH_COLUMNS", "csv_rows", "path_column", "read_header"]


DELIMITERS = (",", ";", "\t")


# The image column of a labels CSV: ``path``, or one of its common other names when the
# header holds exactly one of them.
PATH_COLUMNS = ("path", "file", "filename", "image")


def _no_field_limit() -> None:
    # the largest limit the platform's C long takes (sys.maxsize overflows on Windows)
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 2


_no_field_limit()


def _sniff(first_line: str, suffix: str) -> str:
    """The delimiter of a file whose first non-blank line is ``first_line``: the one of
    ``DELIMITERS`` it holds most often outside quotes (``,`` when none)."""
    if suffix == ".tsv":
        return "\t"
    outside, quoted = [], False
    for ch in first_line:
        if ch == '"':
            quoted = not quoted
        elif not quoted:
            outside.append(ch)
    counts = {d: outside.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])  # ties: the first, ","
    return best if counts[best] else ","


@contextmanager
def csv_rows(path: Path) -> Iterator[Any]:
    """A ``csv.reader`` over ``path`` (UTF-8, a byte-order mark skipped) with the file's
    delimiter; its ``line_num`` is the line a row ends on.  Raises what ``open`` and the
    ``csv`` module raise (``OSError``, ``UnicodeDecodeError``, ``csv.Error``)."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        first = ""
        for line in fh:
            if line.strip():
                first = line
                break
        fh.seek(0)
        yield csv.reader(fh, delimiter=_sniff(first, path.suffix.lower()))


def read_header(path: Path) -> list[str]:
    """The first non-blank row of ``path``, stripped; ``[]`` for an empty file."""
    with csv_rows(path) as reader:
        for row in reader:
            if any(c.strip() for c in row):
                return [c.strip() for c in row]
    return []


def path_column(header: list[str]) -> int | None:
    """The index of the image column (:data:`PATH_COLUMNS`, any case): ``path`` where it
    is there, else the one other name the header holds; None when none or several."""
    lowered = [h.strip().lower() for h in header]
    if "path" in lowered:
        return lowered.index("path")
    found = [i for i, h in enumerate(lowered) if h in PATH_COLUMNS]
    return found[0] if len(found) == 1 else None

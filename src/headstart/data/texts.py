"""Text data: labelled texts from a CSV, TSV, JSONL file or a folder, and how to feed them.

Spec forms (:func:`load_text_data`):

- a ``.csv``, ``.tsv`` or ``.jsonl`` file with a text column and a label column
  (``--text-col``, ``--label-col``; by default the first of text, sentence, review,
  content, document and the first of label, labels, class, category);
- a folder with one sub-folder per class holding ``.txt`` files, one text per file.

:func:`load_labelled` is the one entry the API uses: text files go here, everything
else to :func:`headstart.data.images.load_data`.  Texts become one ``[N, 2, L]`` int64 tensor
per batch (token ids and attention mask, see :class:`headstart.sources.inputs.TextInputs`),
truncated to ``max_length`` tokens and padded to the longest text of the batch only;
training batches group texts of similar length (:class:`LengthGroupedBatches`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from headstart.data.csvfiles import csv_rows, path_column, read_header
from headstart.data.images import load_data
from headstart.data.labelled import IMG_EXTENSIONS, UNLABELLED, LabeledData, _listed
from headstart.data.sampling import EpochBatchSampler, _epoch_plan
from headstart.errors import DataError

TEXT_SUFFIXES = (".csv", ".tsv", ".jsonl")


TEXT_COLUMNS = ("text", "sentence", "review", "content", "document")


LABEL_COLUMNS = ("label", "labels", "class", "category")


_MAX_LISTED = 10


# training batches are sorted by length within groups of this many batches
_GROUP = 50


@dataclass(eq=False)
class TextData(LabeledData):
    """Labelled texts: ``items`` are the texts, ``rows`` name each one in messages."""

    rows: list[str] = field(default_factory=list)
    kind: ClassVar[str] = "texts"

    def name_of(self, i: int) -> str:
        return self.rows[i] if i < len(self.rows) else f"{self.spec}[{i}]"

    def texts(self) -> list[str]:
        return [str(t) for t in self.items]

    def subset(self, indices: Sequence[int] | np.ndarray, *, note: str | None = None) -> TextData:
        idx = [int(i) for i in np.asarray(indices, dtype=np.int64).reshape(-1)]
        out = super().subset(idx, note=note)
        assert isinstance(out, TextData)
        return replace(out, rows=[self.rows[i] for i in idx])

    def load_image(self, i: int) -> Any:
        raise DataError(f"{self.name_of(i)}: is a text, not an image; use a text source (hf:)")

    def fingerprint(self) -> str:
        """SHA-256 over the sorted (text, label) pairs: changes when any text or label does."""
        if self._fingerprint is None:
            lines = sorted(
                f"{text}\t{self.classes[t] if t != UNLABELLED else ''}\n"
                for text, t in zip(self.texts(), self.targets.tolist(), strict=True)
            )
            digest = hashlib.sha256()
            for line in lines:
                digest.update(line.encode("utf-8"))
            self._fingerprint = digest.hexdigest()
        return self._fingerprint


def _is_text_folder(path: Path) -> bool:
    found_txt = False
    for p in path.rglob("*"):
        suffix = p.suffix.lower()
        if suffix in IMG_EXTENSIONS:
            return False
        found_txt = found_txt or suffix == ".txt"
    return found_txt


def is_text_data(spec: str | os.PathLike[str]) -> bool:
    """Whether ``spec`` is text data: a JSONL, a CSV or TSV without an image column
    (``path`` or another name: ``csvfiles.path_column``), or class folders of ``.txt`` (no
    images)."""
    text = os.fspath(spec)
    if text.startswith("builtin:"):
        return False
    path = Path(text).expanduser()
    suffix = path.suffix.lower()
    if path.is_dir():
        return _is_text_folder(path)
    if suffix == ".jsonl":
        return True
    if suffix in (".csv", ".tsv") and path.is_file():
        try:
            header = read_header(path)
        except (OSError, UnicodeDecodeError, csv.Error):
            return False  # data.load_data reports it
        return path_column(header) is None
    return False


def _pick(header: list[str], given: str | None, defaults: Sequence[str], what: str) -> int | None:
    """Index of column ``given`` (or the first default present), case-insensitively."""
    lowered = [h.strip().lower() for h in header]
    wanted = [given] if given else list(defaults)
    for name in wanted:
        if name.strip().lower() in lowered:
            return lowered.index(name.strip().lower())
    return None


def _column_error(path: Path, header: list[str], given: str | None, kind: str) -> DataError:
    defaults = TEXT_COLUMNS if kind == "text" else LABEL_COLUMNS
    asked = f"no column {given!r}" if given else f"no {kind} column ({', '.join(defaults)})"
    images = kind == "text" and not given and path.suffix.lower() in (".csv", ".tsv")
    return DataError(
        f"{path}: {asked}; found columns: {', '.join(repr(h) for h in header) or '(none)'}; "
        f"pass --{kind}-col NAME"
        + ("; a table of images needs the columns 'path' and 'label'" if images else "")
    )


def _read_table(path: Path) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Header and ``(where, cells)`` rows of a CSV, TSV or JSONL file; blank lines skipped."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            header: list[str] = []
            records: list[tuple[str, dict[str, Any]]] = []
            with open(path, encoding="utf-8-sig") as fh:
                for n, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{path}: line {n} is not JSON ({exc.msg})") from exc
                    if not isinstance(obj, dict):
                        raise DataError(f"{path}: line {n} is not a JSON object")
                    header += [k for k in obj if k not in header]
                    records.append((f"line {n}", obj))
            rows = [
                (where, ["" if obj.get(k) is None else str(obj.get(k)) for k in header])
                for where, obj in records
            ]
            return header, rows
        with csv_rows(path) as reader:
            table = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    table = [(n, row) for n, row in table if any(c.strip() for c in row)]
    if not table:
        return [], []
    return table[0][1], [(f"line {n}", row) for n, row in table[1:]]


def _load_table(
    path: Path, *, text_col: str | None, label_col: str | None, labelled: bool
) -> tuple[list[str], list[str], list[str]]:
    header, rows = _read_table(path)
    if not header:
        raise DataError(f"{path}: empty; expected a header with a text and a label column")
    ti = _pick(header, text_col, TEXT_COLUMNS, "text")
    if ti is None:
        if not text_col and len(header) == 1:
            ti = 0  # a one-column file of texts to label
        else:
            raise _column_error(path, header, text_col, "text")
    li = _pick(header, label_col, LABEL_COLUMNS, "label")
    if li is None and (labelled or label_col):
        raise _column_error(path, header, label_col, "label")
    if not rows:
        raise DataError(f"{path}: no rows after the header")
    texts, labels, where = [], [], []
    empty_text, empty_label = [], []
    for w, row in rows:
        text = row[ti] if len(row) > ti else ""
        label = (row[li] if len(row) > li else "").strip() if li is not None else ""
        if not text.strip():
            empty_text.append(w.removeprefix("line "))
        elif labelled and not label:
            empty_label.append(w.removeprefix("line "))
        texts.append(text)
        labels.append(label)
        where.append(f"{path} {w}")
    problems = [
        f"empty {kind} on line(s) {_listed(lines)}"
        for kind, lines in (("text", empty_text), ("label", empty_label))
        if lines
    ]
    if problems:
        raise DataError(f"{path}: " + "; ".join(problems) + "; fill or remove those rows")
    return texts, labels, where


def _load_text_folder(root: Path) -> tuple[list[str], list[str], list[str]]:
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"no classes: expected one sub-folder of .txt files per class in {root}")
    texts, labels, where, empty, no_files = [], [], [], [], []
    for folder in class_dirs:
        files = sorted(
            p
            for p in folder.rglob("*.txt")
            if p.is_file() and not any(x.startswith(".") for x in p.relative_to(root).parts)
        )
        if not files:
            no_files.append(str(folder))
        for f in files:
            try:
                text = f.read_text(encoding="utf-8-sig")
            except (OSError, UnicodeDecodeError) as exc:
                raise DataError(f"{f}: cannot read as UTF-8 text ({exc})") from exc
            if not text.strip():
                empty.append(str(f))
            texts.append(text.strip())
            labels.append(folder.name)
            where.append(str(f))
    if no_files:
        raise DataError(f"class folder(s) with no .txt files: {_listed(no_files)}")
    if empty:
        raise DataError(f"empty text file(s): {_listed(empty)}; fill or remove them")
    return texts, labels, where


def load_text_data(
    spec: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
    text_col: str | None = None,
    label_col: str | None = None,
) -> TextData:
    """Load labelled texts from a CSV/TSV/JSONL file or a folder of class folders.

    With ``classes`` (a trained run's), labels are numbered by that list and a label not
    in it is an error naming its rows.  Raises :class:`DataError` naming the file, row or
    column at fault.
    """
    path = Path(os.fspath(spec)).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        texts, labels, where = _load_text_folder(path)
    elif path.suffix.lower() in TEXT_SUFFIXES:
        texts, labels, where = _load_table(
            path, text_col=text_col, label_col=label_col, labelled=True
        )
    else:
        raise DataError(
            f"{path}: not text data; give a .csv, .tsv or .jsonl file with text and label "
            "columns, or a folder with one sub-folder of .txt files per class"
        )
    if classes is None:
        names = sorted(set(labels))
    else:
        names = list(classes)
        unknown: dict[str, list[str]] = {}
        for label, w in zip(labels, where, strict=True):
            if label not in names:
                unknown.setdefault(label, []).append(w)
        if unknown:
            listed = _listed([f"{label!r} ({_listed(ws[:3])})" for label, ws in unknown.items()])
            raise DataError(
                f"{path}: label(s) not among this model's classes: {listed}; valid classes: "
                f"{', '.join(names)}"
            )
    index = {c: i for i, c in enumerate(names)}
    return TextData(
        spec=str(path),
        classes=names,
        items=list(texts),
        targets=np.array([index[label] for label in labels], dtype=np.int64),
        root=path if path.is_dir() else path.parent,
        allow_hflip=False,
        rows=where,
    )


def load_labelled(
    spec: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
    text_col: str | None = None,
    label_col: str | None = None,
    skip_bad: bool = False,
    progress: bool = False,
) -> LabeledData:
    """Text data through :func:`load_text_data`, any other spec through ``load_data``
    (which pre-scans images: ``skip_bad`` and ``progress`` are for that)."""
    if is_text_data(spec):
        return load_text_data(spec, classes=classes, text_col=text_col, label_col=label_col)
    return load_data(spec, classes=classes, skip_bad=skip_bad, progress=progress)


def read_texts(
    inputs: Sequence[str | os.PathLike[str]], *, text_col: str | None = None
) -> list[tuple[str, str]]:
    """``(where, text)`` pairs to label: a ``.txt`` file is one text per line, a CSV, TSV
    or JSONL file gives its text column.  Raises :class:`DataError` for a missing file
    or an empty text (naming its line)."""
    out: list[tuple[str, str]] = []
    for given in inputs:
        path = Path(given).expanduser()
        if not path.is_file():
            raise DataError(
                f"{path}: no such file; give --text TEXT, a .txt file (one text per line) or "
                "a .csv/.tsv/.jsonl file with a text column"
            )
        if path.suffix.lower() in TEXT_SUFFIXES:
            texts, _, where = _load_table(path, text_col=text_col, label_col=None, labelled=False)
            out.extend(zip(where, texts, strict=True))
            continue
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot read as UTF-8 text ({exc})") from exc
        found = [(f"{path} line {n}", line) for n, line in enumerate(lines, 1) if line.strip()]
        if not found:
            raise DataError(f"{path}: no texts (one per line expected)")
        out.extend(found)
    return out


class _Encoded(Dataset[tuple[list[int], int]]):
    def __init__(self, ids: list[list[int]], targets: np.ndarray) -> None:
        self.ids = ids
        self.targets = [int(t) for t in targets]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int | tuple[int, int]) -> tuple[list[int], int]:
        if isinstance(i, tuple):  # (index, sample seed) from an EpochBatchSampler
            i = i[0]
        return self.ids[i], self.targets[i]


class PadCollate:
    """Pad a batch to its longest text: ``([N, 2, L] ids + mask, [N] targets)``."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = int(pad_id)

    def __call__(self, batch: list[tuple[list[int], int]]) -> tuple[torch.Tensor, torch.Tensor]:
        longest = max(len(ids) for ids, _ in batch)
        x = torch.zeros((len(batch), 2, longest), dtype=torch.int64)
        x[:, 0] = self.pad_id
        for i, (ids, _) in enumerate(batch):
            x[i, 0, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
            x[i, 1, : len(ids)] = 1
        return x, torch.tensor([t for _, t in batch], dtype=torch.int64)


class LengthGroupedBatches(Sampler[list[int]]):
    """Batches of texts of similar length, so little of each batch is padding.

    Training (``shuffle``): shuffle, cut into groups of ``50 x batch_size``, sort each
    group by length, cut it into batches, shuffle the batches (the idea of transformers'
    ``LengthGroupedSampler``).  Evaluation: longest first, in a fixed order.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None = None,
    ) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.generator = generator

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def _batches(self) -> list[list[int]]:
        n, bs = len(self.lengths), self.batch_size
        if not self.shuffle:
            order = np.argsort(-self.lengths, kind="stable")
            return [order[i : i + bs].tolist() for i in range(0, n, bs)]
        perm = torch.randperm(n, generator=self.generator).numpy()
        batches: list[list[int]] = []
        for start in range(0, n, bs * _GROUP):
            group = perm[start : start + bs * _GROUP]
            group = group[np.argsort(-self.lengths[group], kind="stable")]
            batches += [group[i : i + bs].tolist() for i in range(0, len(group), bs)]
        shuffled = torch.randperm(len(batches), generator=self.generator).tolist()
        return [batches[i] for i in shuffled]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._batches()


class LengthGroupedEpochBatches(EpochBatchSampler):
    """Training batches grouped by length, as :class:`LengthGroupedBatches`, whose order
    is a function of ``(seed, epoch)`` (:class:`headstart.data.sampling.EpochBatchSampler`),
    so a checkpointed text run resumes mid-epoch exactly as image runs do."""

    def __init__(self, lengths: Sequence[int], batch_size: int, *, seed: int) -> None:
        super().__init__(len(lengths), batch_size, seed=seed)
        self.lengths = np.asarray(lengths, dtype=np.int64)

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def global_size(self, step: int) -> int:
        return len(self._batches()[step])

    def _batches(self) -> list[list[tuple[int, int]]]:
        order, seeds = _epoch_plan(self.n, self.seed, self.epoch)
        bs = self.batch_size
        batches: list[list[tuple[int, int]]] = []
        for start in range(0, self.n, bs * _GROUP):
            pos = np.arange(start, min(start + bs * _GROUP, self.n))
            pos = pos[np.argsort(-self.lengths[order[pos]], kind="stable")]
            batches += [
                [(int(order[p]), int(seeds[p])) for p in pos[i : i + bs]]
                for i in range(0, len(pos), bs)
            ]
        shuffle = np.random.default_rng([self.seed, self.epoch, 1]).permutation(len(batches))
        return [batches[i] for i in shuffle]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        yield from self._batches()[self.skip :]


def encode(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, with the model's special tokens, at most ``max_length``."""
    if not texts:
        return []
    out = tokenizer(list(texts), truncation=True, max_length=int(max_length))
    return [list(ids) for ids in out["input_ids"]]


def text_loader(
    texts: Sequence[str],
    targets: np.ndarray,
    tokenizer: Any,
    *,
    max_length: int,
    batch_size: int,
    train: bool,
    generator: torch.Generator | None = None,
    workers: int = 0,
    seed: int = 0,
) -> DataLoader[Any]:
    """A loader of ``([N, 2, L], [N])`` batches: truncated, dynamically padded, grouped
    by length (in a fixed longest-first order when not ``train``: see :func:`loader_order`).
    """
    ids = encode(tokenizer, texts, max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    lengths = [len(i) for i in ids]
    sampler: Sampler[Any] = (
        LengthGroupedEpochBatches(lengths, batch_size, seed=seed)
        if train
        else LengthGroupedBatches(lengths, batch_size, shuffle=False)
    )
    return DataLoader(
        _Encoded(ids, targets),
        batch_sampler=sampler,
        collate_fn=PadCollate(pad),
        num_workers=workers,
        persistent_workers=workers > 0,
        # its own generator: not torch's global one, whose stream dropout draws from
        generator=generator if generator is not None else torch.Generator(),
    )


def loader_order(loader: DataLoader[Any]) -> np.ndarray:
    """The item index of each prediction of an evaluation :func:`text_loader`, in order."""
    sampler = loader.batch_sampler
    assert isinstance(sampler, LengthGroupedBatches) and not sampler.shuffle
    return np.asarray([i for batch in sampler for i in batch], dtype=np.int64)


DEFAULT_MAX_LENGTH = 128  # tokens: a few sentences; --max-length changes it

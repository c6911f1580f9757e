"""``evaluate`` and ``predict``: a finished run dir scored on labelled data, or labelling
new inputs; they need the run dir and nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart._io import atomic_write_json, atomic_write_text
from headstart.choose.report import plot_confusion
from headstart.data.images import load_data
from headstart.data.labelled import UNLABELLED, LabeledData, list_inputs
from headstart.data.scan import scan_images
from headstart.data.texts import TextData, load_labelled, loader_order, read_texts, text_loader
from headstart.errors import ConfigError, DataError
from headstart.runtime import resolve_device
from headstart.sources.target import LoadedRun, load_run
from headstart.train.assemble import _loader
from headstart.train.loop import Predictions, predict_loader

if TYPE_CHECKING:
    pass
log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    run_dir: Path
    out_dir: Path
    accuracy: float
    macro_f1: float
    n_items: int
    per_class: list[dict[str, Any]]
    confusion: list[list[int]]

    def summary(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "out_dir": str(self.out_dir),
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "n_items": self.n_items,
            "per_class": self.per_class,
            "confusion_matrix": self.confusion,
        }


def _as_run(run: str | Path | LoadedRun) -> LoadedRun:
    return run if isinstance(run, LoadedRun) else load_run(run)


def _predict_data(
    run: LoadedRun, data: LabeledData, *, batch_size: int, device: str, workers: int = 0
) -> Predictions:
    if run.text is not None:
        return _predict_texts(run, data, batch_size=batch_size, device=device)
    loader = _loader(
        data,
        run.preprocessing,
        train=False,
        augment="none",
        batch_size=batch_size,
        workers=workers,
    )
    dev = resolve_device(device)
    run.model.to(dev)
    try:
        return predict_loader(run.model, loader, dev)
    finally:
        run.model.cpu()


def _predict_texts(
    run: LoadedRun, data: LabeledData, *, batch_size: int, device: str
) -> Predictions:
    """Predictions for texts, in the order of ``data`` (the loader groups by length)."""
    assert run.text is not None
    if not isinstance(data, TextData):
        raise DataError(
            f"{data.spec}: images, but {run.path} is a text model; give texts (a CSV, TSV or "
            "JSONL with text and label columns, or a folder of .txt files per class)"
        )
    loader = text_loader(
        data.texts(),
        data.targets,
        run.text.tokenizer,
        max_length=int(run.meta.get("text", {}).get("max_length", run.text.max_length)),
        batch_size=batch_size,
        train=False,
    )
    dev = resolve_device(device)
    run.model.to(dev)
    try:
        preds = predict_loader(run.model, loader, dev)
    finally:
        run.model.cpu()
    order = loader_order(loader)
    probs = np.empty_like(preds.probs)
    targets = np.empty_like(preds.targets)
    probs[order], targets[order] = preds.probs, preds.targets
    return Predictions(targets=targets, probs=probs, loss=preds.loss)


def _text_columns(run: LoadedRun, text_col: str | None, label_col: str | None) -> dict[str, Any]:
    """The columns to read: as given, else the ones the run was trained with."""
    saved = run.meta.get("text") or {}
    return {
        "text_col": text_col or saved.get("text_col"),
        "label_col": label_col or saved.get("label_col"),
    }


def evaluate(
    run: str | Path | LoadedRun,
    data: str,
    *,
    out: str | Path | None = None,
    batch_size: int = 64,
    device: str = "auto",
    text_col: str | None = None,
    label_col: str | None = None,
) -> EvalResult:
    """Score a run on labelled data: accuracy, macro-F1, a per-class table, a confusion PNG.

    Files go to ``out`` (default ``RUN/eval``): ``eval.json``, ``per_class.csv`` and
    ``confusion_matrix.png``.
    """
    from sklearn.metrics import classification_report, confusion_matrix

    loaded = _as_run(run)
    if loaded.text is not None:
        labelled = load_labelled(
            data, classes=loaded.classes, **_text_columns(loaded, text_col, label_col)
        )
    else:
        labelled = load_data(data, classes=loaded.classes)
    if not len(labelled):
        raise DataError(f"{data}: no items to evaluate")
    preds = _predict_data(loaded, labelled, batch_size=batch_size, device=device)
    labels = list(range(len(loaded.classes)))
    report = classification_report(
        preds.targets,
        preds.preds,
        labels=labels,
        target_names=loaded.classes,
        output_dict=True,
        zero_division=0,
    )
    per_class = [
        {
            "class": name,
            "precision": report[name]["precision"],
            "recall": report[name]["recall"],
            "f1": report[name]["f1-score"],
            "support": int(report[name]["support"]),
        }
        for name in loaded.classes
    ]
    matrix = confusion_matrix(preds.targets, preds.preds, labels=labels)
    out_dir = Path(out) if out is not None else loaded.path / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    result = EvalResult(
        run_dir=loaded.path,
        out_dir=out_dir,
        accuracy=preds.accuracy,
        macro_f1=preds.macro_f1,
        n_items=len(labelled),
        per_class=per_class,
        confusion=matrix.tolist(),
    )
    plot_confusion(
        matrix,
        loaded.classes,
        out_dir / "confusion_matrix.png",
        title=f"{data}: accuracy {result.accuracy:.3f} on {result.n_items} items",
    )
    csv_lines = ["class,precision,recall,f1,support"] + [
        f"{r['class']},{r['precision']:.4f},{r['recall']:.4f},{r['f1']:.4f},{r['support']}"
        for r in per_class
    ]
    atomic_write_text(out_dir / "per_class.csv", "\n".join(csv_lines) + "\n")
    atomic_write_json(out_dir / "eval.json", {"data": str(data), **result.summary()})
    return result


def predict(
    run: str | Path | LoadedRun,
    inputs: Sequence[str | Path],
    *,
    top_k: int = 1,
    batch_size: int = 64,
    device: str = "auto",
    texts: Sequence[str] = (),
    text_col: str | None = None,
    skip_bad: bool = False,
) -> list[dict[str, Any]]:
    """Label and probability for each input.

    Image runs: image files (folders are searched for images).  Text runs: ``texts``,
    plus files of texts in ``inputs`` (a ``.txt`` file holds one text per line; a CSV,
    TSV or JSONL file its text column, ``text_col`` or the run's).  Each row has the
    input's ``path`` (for a text: its file and line, or ``--text N``).  Image files are
    checked first, all of them (:mod:`headstart.data.scan`): unreadable ones are one error
    listing them, or with ``skip_bad`` rows with an ``error`` and no label.
    """
    loaded = _as_run(run)
    data: LabeledData
    every: list[Path] = []  # image inputs, readable or not, in order
    unreadable: dict[Path, str] = {}
    if loaded.text is not None:
        pairs = read_texts(inputs, text_col=_text_columns(loaded, text_col, None)["text_col"])
        pairs += [(f"--text {i}", t) for i, t in enumerate(texts, start=1)]
        if not pairs:
            raise DataError("no texts given; pass --text TEXT or files of texts")
        empty = [w for w, t in pairs if not t.strip()]
        if empty:
            raise DataError(f"empty text: {', '.join(empty[:10])}")
        names = [w for w, _ in pairs]
        data = TextData(
            spec="predict",
            classes=loaded.classes,
            items=[t for _, t in pairs],
            targets=np.full(len(pairs), UNLABELLED, dtype=np.int64),
            rows=names,
        )
    else:
        if texts:
            raise ConfigError(f"--text: {loaded.path} is an image model; pass image files")
        paths = list_inputs(inputs)
        unreadable = {Path(c.path): str(c.problem) for c in scan_images(paths) if not c.ok}
        if unreadable and not skip_bad:
            listed = [f"{p} ({why})" for p, why in unreadable.items()]
            raise DataError(
                f"{len(unreadable)} unreadable image(s): {', '.join(listed[:10])}"
                + (f" and {len(listed) - 10} more" if len(listed) > 10 else "")
                + "; fix or remove them, or pass --skip-bad to label the others"
            )
        every = paths
        paths = [p for p in paths if p not in unreadable]
        if not paths:
            raise DataError("none of the inputs is a readable image")
        names = [str(p) for p in paths]
        data = LabeledData(
            spec="predict",
            classes=loaded.classes,
            items=list(paths),
            targets=np.full(len(paths), UNLABELLED, dtype=np.int64),
        )
    preds = _predict_data(loaded, data, batch_size=batch_size, device=device)
    k = max(1, min(top_k, len(loaded.classes)))
    out: list[dict[str, Any]] = []
    for i, (path, p) in enumerate(zip(names, preds.probs, strict=True)):
        order = np.argsort(-p)[:k]
        out.append(
            {
                "path": path,
                **({"text": data.items[i]} if loaded.text is not None else {}),
                "label": loaded.classes[int(order[0])],
                "probability": float(p[order[0]]),
                "top": [
                    {"label": loaded.classes[int(i)], "probability": float(p[i])} for i in order
                ],
            }
        )
    if unreadable:  # --skip-bad: every input in order, the unreadable ones with why
        labelled = {row["path"]: row for row in out}
        out = [
            {"path": str(p), "label": None, "probability": None, "top": [], "error": unreadable[p]}
            if p in unreadable
            else labelled[str(p)]
            for p in every
        ]
    return out

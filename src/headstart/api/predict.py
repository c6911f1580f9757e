"""``evaluate`` and ``predict``: a finished run dir scored on labelled data, or labelling
new inputs; they need the run dir and nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart._io import atomic_write_json, atomic_write_text, writes_to
from headstart.choose.plots import plot_confusion
from headstart.config.fields import flag
from headstart.data.labelled import LabeledData
from headstart.errors import ConfigError, DataError
from headstart.features.extract import in_item_order
from headstart.rundir import prepare_out, writing
from headstart.runtime import resolve_device
from headstart.sources.inputs import ToLabel
from headstart.sources.target import LoadedRun, load_run
from headstart.train.loop import Predictions, predict_loader

log = logging.getLogger(__name__)

EVAL_FILE = "eval.json"  # what marks a folder as an evaluation's


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


def _check_at_least_one(**counts: int) -> None:
    """Refuse a count below 1 (``--batch-size 0``, ``--top-k -1``) before any work."""
    for name, value in counts.items():
        if value < 1:
            raise ConfigError(f"{flag(name)} must be at least 1 (got {value})")


def _as_run(run: str | Path | LoadedRun) -> LoadedRun:
    return run if isinstance(run, LoadedRun) else load_run(run)


def _predict_data(
    run: LoadedRun, data: LabeledData, *, batch_size: int, device: str, workers: int = 0
) -> Predictions:
    """The run's predictions for ``data``, in the order of ``data`` (a text loader
    groups by length: its rows are put back).  Raises :class:`DataError` for data of the
    other kind (texts for an image model, images for a text model)."""
    run.inputs.check(data, where=data.spec, model=str(run.path))
    loader, order = run.inputs.eval_loader(data, batch_size=batch_size, workers=workers)
    dev = resolve_device(device)
    run.model.to(dev)
    try:
        preds = predict_loader(run.model, loader, dev)
    finally:
        run.model.cpu()
    return Predictions(
        targets=in_item_order(preds.targets, order),
        probs=in_item_order(preds.probs, order),
        loss=preds.loss,
    )


def evaluate(
    run: str | Path | LoadedRun,
    data: str,
    *,
    out: str | Path | None = None,
    batch_size: int = 64,
    device: str = "auto",
    text_col: str | None = None,
    label_col: str | None = None,
    overwrite: bool = False,
) -> EvalResult:
    """Score a run on labelled data: accuracy, macro-F1, a per-class table, a confusion PNG.

    Files go to ``out`` (default ``RUN/eval``): ``eval.json``, ``per_class.csv`` and
    ``confusion_matrix.png``.  ``out`` must be new, empty or (with ``overwrite``) an
    earlier evaluation (it holds ``eval.json``), whose three files are replaced; never the
    data nor a folder holding it.  One process at a time writes it.
    """
    _check_at_least_one(batch_size=batch_size)
    loaded = _as_run(run)
    out_dir = Path(out) if out is not None else loaded.path / "eval"
    inputs = [("DATA", str(data))]
    with writing(out_dir, inputs=inputs):
        prepare_out(
            out_dir, overwrite=overwrite, inputs=inputs, marker=EVAL_FILE, what="evaluation"
        )
        return _evaluate(
            loaded,
            data,
            out_dir,
            batch_size=batch_size,
            device=device,
            text_col=text_col,
            label_col=label_col,
        )


def _evaluate(
    loaded: LoadedRun,
    data: str,
    out_dir: Path,
    *,
    batch_size: int,
    device: str,
    text_col: str | None,
    label_col: str | None,
) -> EvalResult:
    from sklearn.metrics import classification_report, confusion_matrix

    labelled = loaded.inputs.load(
        data, classes=loaded.classes, **loaded.columns(text_col, label_col)
    )
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
    result = EvalResult(
        run_dir=loaded.path,
        out_dir=out_dir,
        accuracy=preds.accuracy,
        macro_f1=preds.macro_f1,
        n_items=len(labelled),
        per_class=per_class,
        confusion=matrix.tolist(),
    )
    with writes_to(out_dir, instead="choose another --out"):  # read-only, full disk: say so
        _write_eval(result, matrix, loaded.classes, data)
    return result


def _write_eval(result: EvalResult, matrix: np.ndarray, classes: list[str], data: str) -> None:
    """An evaluation's three files; ``eval.json`` last (it marks the folder as one)."""
    out_dir = result.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_confusion(
        matrix,
        classes,
        out_dir / "confusion_matrix.png",
        title=f"{data}: accuracy {result.accuracy:.3f} on {result.n_items} items",
    )
    csv_lines = ["class,precision,recall,f1,support"] + [
        f"{r['class']},{r['precision']:.4f},{r['recall']:.4f},{r['f1']:.4f},{r['support']}"
        for r in result.per_class
    ]
    atomic_write_text(out_dir / "per_class.csv", "\n".join(csv_lines) + "\n")
    atomic_write_json(out_dir / EVAL_FILE, {"data": str(data), **result.summary()})


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
    _check_at_least_one(batch_size=batch_size, top_k=top_k)
    loaded = _as_run(run)
    given = loaded.inputs.to_label(
        inputs,
        texts,
        classes=loaded.classes,
        text_col=loaded.columns(text_col, None)["text_col"],
        skip_bad=skip_bad,
        model=str(loaded.path),
    )
    preds = _predict_data(loaded, given.data, batch_size=batch_size, device=device)
    out = _rows(loaded.classes, given, preds.probs, top_k)
    if given.unreadable:  # --skip-bad: every input in order, the unreadable ones with why
        labelled = {row["path"]: row for row in out}
        out = [
            {
                "path": str(p),
                "label": None,
                "probability": None,
                "top": [],
                "error": given.unreadable[p],
            }
            if p in given.unreadable
            else labelled[str(p)]
            for p in given.every
        ]
    return out


def _rows(
    classes: list[str], given: ToLabel, probs: np.ndarray, top_k: int
) -> list[dict[str, Any]]:
    """One row per item: its name, what else it shows, its label and the ``top_k``."""
    k = max(1, min(top_k, len(classes)))
    out: list[dict[str, Any]] = []
    for path, shown, p in zip(given.names, given.shown, probs, strict=True):
        order = np.argsort(-p)[:k]
        out.append(
            {
                "path": path,
                **shown,
                "label": classes[int(order[0])],
                "probability": float(p[order[0]]),
                "top": [{"label": classes[int(i)], "probability": float(p[i])} for i in order],
            }
        )
    return out

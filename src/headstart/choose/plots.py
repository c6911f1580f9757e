"""The plots of the reports: a fit's curves, a confusion matrix, curves side by side, the
accuracy of each fold.  Each ``*_figure`` function returns the figure (tests read its lines
and labels); each ``plot_*`` function draws it and writes the PNG.

Every accuracy axis is in percent, from 0 to 100, with the chance line (one class in
``classes`` guessed at random) drawn and labelled, so that a reader sees at a glance how
far above guessing a model is.  The look is :mod:`headstart._plot`'s, shared with the
range test's plot.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headstart._plot import save_png, styled

__all__ = [
    "CHANCE_LABEL",
    "accuracy_axis",
    "confusion_figure",
    "curves_figure",
    "folds_figure",
    "lines_figure",
    "plot_confusion",
    "plot_curves",
    "plot_folds",
    "plot_lines",
]

CHANCE_LABEL = "chance"
LOSS_LABEL = "loss (cross-entropy, nats)"


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure  # no pyplot: no global state, no display

    return Figure(figsize=(width, height))


def accuracy_axis(ax: Any, label: str, classes: int | None) -> None:
    """An accuracy axis: ``label (%)`` from 0 to 100%, and the chance line at
    ``1/classes`` labelled ``chance (1/N = P%)`` when the number of classes is known."""
    from matplotlib.ticker import PercentFormatter

    ax.set_ylim(0, 1.02)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    ax.set_ylabel(f"{label} (%)")
    if classes and classes > 1:
        ax.axhline(
            1 / classes,
            color="0.35",
            linestyle="--",
            linewidth=1.2,
            label=f"{CHANCE_LABEL} (1/{classes} = {100 / classes:.0f}%)",
            zorder=1,
        )


@styled
def curves_figure(rows: Sequence[dict[str, Any]], *, title: str, classes: int | None) -> Any:
    """Loss and accuracy per epoch (train and validation), side by side."""
    epochs = [r["epoch"] for r in rows]
    fig = _figure(10, 4)
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], marker="o", label="train")
    ax_acc.plot(epochs, [r["train_acc"] for r in rows], marker="o", label="train")
    if any(r.get("val_acc") is not None for r in rows):
        ax_loss.plot(epochs, [r["val_loss"] for r in rows], marker="o", label="validation")
        ax_acc.plot(epochs, [r["val_acc"] for r in rows], marker="o", label="validation")
    ax_loss.set(xlabel="epoch", ylabel=LOSS_LABEL, title="loss")
    ax_acc.set(xlabel="epoch", title="accuracy")
    accuracy_axis(ax_acc, "accuracy", classes)
    for ax in (ax_loss, ax_acc):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_curves(
    rows: Sequence[dict[str, Any]], dest: Path, *, title: str, classes: int | None = None
) -> Path:
    """:func:`curves_figure` as a PNG."""
    return save_png(curves_figure(rows, title=title, classes=classes), dest)


@styled
def confusion_figure(matrix: np.ndarray, classes: Sequence[str], *, title: str) -> Any:
    """A confusion matrix (rows: true class, columns: predicted) with counts in the cells."""
    n = len(classes)
    size = max(4.0, 0.5 * n + 2)
    fig = _figure(size, size)
    ax = fig.subplots()
    ax.grid(False)
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8, label="items")
    ax.set_xticks(range(n), labels=list(classes), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(classes))
    ax.set(xlabel="predicted class", ylabel="true class")
    # Data specs can be long (builtin:digits?classes=...): wrap rather than cut off.
    ax.set_title(textwrap.fill(title, width=int(8 * size)), fontsize=9)
    top = matrix.max() if matrix.size else 0
    for i in range(n):
        for j in range(n):
            color = "white" if top and matrix[i, j] > top / 2 else "black"
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", color=color)
    fig.tight_layout()
    return fig


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], dest: Path, *, title: str) -> Path:
    """:func:`confusion_figure` as a PNG."""
    return save_png(confusion_figure(matrix, classes, title=title), dest)


@styled
def lines_figure(
    series: Sequence[tuple[str, Sequence[float], Sequence[float] | None]],
    *,
    title: str,
    xlabel: str,
    classes: int | None,
    ylabel: str = "validation accuracy",
    xs: Sequence[float] | None = None,
) -> Any:
    """Several accuracy curves on one plot (``(label, values, std or None)``), e.g.
    transfer vs scratch per epoch, or accuracy against labels per class."""
    fig = _figure(7, 4)
    ax = fig.subplots()
    for label, values, std in series:
        x = np.asarray(xs if xs is not None else range(1, len(values) + 1), dtype=float)
        y = np.asarray(values, dtype=float)
        (line,) = ax.plot(x, y, marker="o", label=label)
        if std is not None:
            s = np.asarray(std, dtype=float)
            ax.fill_between(x, y - s, y + s, alpha=0.15, color=line.get_color())
    if xs is None:
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set(xlabel=xlabel, title=title)
    accuracy_axis(ax, ylabel, classes)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_lines(
    series: Sequence[tuple[str, Sequence[float], Sequence[float] | None]],
    dest: Path,
    *,
    title: str,
    xlabel: str,
    classes: int | None,
    ylabel: str = "validation accuracy",
    xs: Sequence[float] | None = None,
) -> Path:
    """:func:`lines_figure` as a PNG."""
    fig = lines_figure(series, title=title, xlabel=xlabel, classes=classes, ylabel=ylabel, xs=xs)
    return save_png(fig, dest)


@styled
def folds_figure(
    folds: Sequence[tuple[str, Sequence[float], float, float]], *, title: str, classes: int | None
) -> Any:
    """Each strategy's fold accuracies as dots, with its mean ± std: ``(name, accuracies,
    mean, std)`` per strategy."""
    fig = _figure(1.6 * len(folds) + 2.5, 4)
    ax = fig.subplots()
    for i, (_, accs, mean, std) in enumerate(folds):
        jitter = np.linspace(-0.12, 0.12, len(accs)) if len(accs) > 1 else [0.0]
        ax.scatter(i + np.asarray(jitter), accs, alpha=0.6, zorder=2)
        label = "mean ± std" if i == 0 else None
        ax.errorbar(i, mean, yerr=std, fmt="o", color="black", capsize=6, zorder=3, label=label)
    ax.set_xticks(range(len(folds)), labels=[name for name, *_ in folds])
    ax.set(xlabel="strategy", title=title)
    ax.grid(False, axis="x")
    accuracy_axis(ax, "held-out accuracy", classes)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def plot_folds(
    folds: Sequence[tuple[str, Sequence[float], float, float]],
    dest: Path,
    *,
    title: str,
    classes: int | None,
) -> Path:
    """:func:`folds_figure` as a PNG."""
    return save_png(folds_figure(folds, title=title, classes=classes), dest)

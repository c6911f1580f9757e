"""Plots a reader trusts: the chance line on every accuracy plot, axes that say what they
measure and in what unit, and one look (headstart._plot's) for every plot headstart draws."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure

from headstart._plot import STYLE, styled
from headstart.choose.plots import (
    CHANCE_LABEL,
    confusion_figure,
    curves_figure,
    folds_figure,
    lines_figure,
    plot_curves,
)
from headstart.train.lr_find import LrCurve, plot_lr_curve

ROWS = [
    {"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.3 * e, "val_loss": 1.1 / e, "val_acc": v}
    for e, v in ((1, 0.4), (2, 0.6), (3, 0.7))
]


def _chance(ax: Any) -> list[Any]:
    return [line for line in ax.get_lines() if line.get_label().startswith(CHANCE_LABEL)]


def _accuracy_axes(fig: Figure) -> list[Any]:
    return [ax for ax in fig.axes if "accuracy" in ax.get_ylabel()]


@pytest.mark.parametrize("classes", [2, 3, 10])
def test_every_accuracy_plot_draws_the_chance_line(classes: int) -> None:
    figures = [
        curves_figure(ROWS, title="t", classes=classes),
        lines_figure(
            [("full", [0.4, 0.6], [0.1, 0.1])], title="t", xlabel="epoch", classes=classes
        ),
        folds_figure([("full", [0.5, 0.7], 0.6, 0.1)], title="t", classes=classes),
    ]
    for fig in figures:
        (ax,) = _accuracy_axes(fig)
        (line,) = _chance(ax)
        assert line.get_ydata()[0] == pytest.approx(1 / classes)
        assert line.get_label() == f"chance (1/{classes} = {100 / classes:.0f}%)"
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert line.get_label() in legend, "the chance line is named in the legend"
        assert ax.get_ylabel().endswith("(%)") and ax.get_ylim() == (0, 1.02)
        assert ax.get_xlabel(), "every axis says what it measures"


def test_no_chance_line_where_the_classes_are_unknown() -> None:
    fig = lines_figure([("a", [0.5], None)], title="t", xlabel="epoch", classes=None)
    assert not _chance(fig.axes[0])


def test_axes_are_labelled_with_their_units() -> None:
    loss, acc = curves_figure(ROWS, title="t", classes=3).axes
    assert loss.get_xlabel() == acc.get_xlabel() == "epoch"
    assert loss.get_ylabel() == "loss (cross-entropy, nats)"
    assert acc.get_ylabel() == "accuracy (%)"
    acc.figure.canvas.draw()
    assert [t.get_text() for t in acc.get_yticklabels()][-1].endswith("%")
    matrix = confusion_figure(np.eye(3, dtype=int), ["a", "b", "c"], title="t").axes[0]
    assert (matrix.get_xlabel(), matrix.get_ylabel()) == ("predicted class", "true class")


def _look(fig: Figure) -> tuple[Any, ...]:
    """What the shared style sets, read back from a drawn figure's first axes."""
    ax = fig.axes[0]
    return (
        ax.spines["top"].get_visible(),
        ax.spines["right"].get_visible(),
        ax.title.get_fontweight(),
        ax.xaxis.label.get_fontsize(),
    )


def test_one_look_for_every_plot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved: list[Figure] = []
    real = Figure.savefig

    def keep(fig: Figure, *args: Any, **kwargs: Any) -> None:
        saved.append(fig)
        real(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    plot_curves(ROWS, tmp_path / "curves.png", title="t", classes=3)
    lrs = tuple(float(x) for x in np.logspace(-5, 0, 20))
    losses = tuple(2.0 - 0.05 * i for i in range(20))
    curve = LrCurve(lrs, losses, losses, 1e-3, "valley", "reached end_lr", 20, 0.1)
    plot_lr_curve(curve, tmp_path / "lr_find.png", title="t")  # the range test's (train)
    drawn = [*saved, lines_figure([("a", [0.5], None)], title="t", xlabel="x", classes=2)]
    drawn.append(folds_figure([("a", [0.5], 0.5, 0.0)], title="t", classes=2))
    expected = (False, False, STYLE["axes.titleweight"], STYLE["axes.labelsize"])
    assert [_look(fig) for fig in drawn] == [expected] * len(drawn)
    # the curves use the shared palette, first colour first
    first = saved[0].axes[0].get_lines()[0].get_color()
    assert matplotlib.colors.to_hex(first).lower() == "#0072b2"


def test_the_style_is_put_back_after_drawing() -> None:
    before = matplotlib.rcParams["axes.spines.top"]

    @styled
    def inside() -> bool:
        return bool(matplotlib.rcParams["axes.spines.top"])

    assert inside() is False
    assert matplotlib.rcParams["axes.spines.top"] == before

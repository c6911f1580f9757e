"""One look for every plot headstart draws: the matplotlib settings (:data:`STYLE`), the
decorator that draws under them (:func:`styled`) and the PNG writer (:func:`save_png`).

It sits in the lowest layers so that the range test's plot (``train``) and the reports'
(``choose``) share it.  Figures are made with ``matplotlib.figure.Figure``, never pyplot:
no global figure state, no display.  matplotlib is imported when a plot is drawn, so
that importing a module which can plot does not load it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, cast

from headstart._io import atomic_path

__all__ = ["DPI", "STYLE", "save_png", "styled"]

DPI = 110

# The Okabe-Ito palette: told apart by readers with any common colour-vision deficiency.
_COLOURS = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442"]

STYLE: dict[str, Any] = {
    "figure.facecolor": "white",
    "axes.facecolor": "white",
    "savefig.facecolor": "white",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.8,
    "lines.markersize": 5,
    "axes.prop_cycle": f"cycler('color', {_COLOURS!r})",
}

P = ParamSpec("P")
R = TypeVar("R")


def styled(draw: Callable[P, R]) -> Callable[P, R]:
    """``draw`` run under :data:`STYLE` (a ``matplotlib.rc_context``): every artist it
    makes takes the shared look, and the caller's settings are put back after."""

    @functools.wraps(draw)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        import matplotlib

        with matplotlib.rc_context(cast(Any, STYLE)):  # its keys typed as Literals
            return draw(*args, **kwargs)

    return wrapper


def save_png(fig: Any, dest: Path) -> Path:
    """``fig`` written to ``dest`` as a PNG, atomically, at :data:`DPI`."""
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return dest

"""Reading a learning rate off a range test's curve (:mod:`headstart.train.lr_find`).

Rules (:data:`RULES`):

- ``valley`` (default; the default of fastai's ``lr_find``, ``fastai/callback/schedule.py``):
  the longest strictly decreasing run of the smoothed loss (a longest decreasing
  subsequence), and the point about halfway along it: index ``start + int(s) +
  int(s / 2)`` with ``s = (end - start) / 3``.  It sits in the middle of the stretch
  where the loss falls steadily, and a longest run is robust to one noisy point, where
  the steepest point of a noisy curve may be a blip.
- ``steepest``: the most negative slope of the smoothed loss (Lightning's
  ``suggestion()``), taken against log10(lr) as fastai's ``steep`` does and as
  pytorch-lightning#21171 proposes for Lightning's exponential mode: the rates are
  log-spaced, and against lr itself a slope at 1e-6 would weigh a million times one at 1.
- ``minimum/10``: a tenth of the rate at the lowest loss (fastai's ``minimum``: an order
  of magnitude below where the loss bottoms out).
- ``minimum/3``: a third of it (``fit --lr auto``'s rule): the peak of a warm-up and
  cosine schedule, which spends most of its steps far below its peak, may sit closer
  to where the loss bottoms out (Smith, "Cyclical Learning Rates", 2017, takes the
  bound where the loss stops falling and a third to a quarter of it as the low end).

All four look at the curve as fastai's ``lr_find`` hands it to them: cut at the first
non-finite loss, the first tenth of the planned steps and the last five points dropped
(the start is still noise, the end already diverging).  A curve too short to read, flat,
or never falling gets :data:`FALLBACK_LR` (kept inside the rates tested) and says so in
the rule string, e.g. ``"valley (loss flat over the sweep: fallback 0.001)"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from headstart.errors import ConfigError

__all__ = [
    "FALLBACK_LR",
    "FLAT_TOLERANCE",
    "MIN_POINTS",
    "RULES",
    "SKIP_END",
    "check_rule",
    "suggest",
    "suggest_explained",
]

RULES = ("valley", "steepest", "minimum/10", "minimum/3")

# The rate when the curve says nothing (headstart's --lr default before --lr auto).
FALLBACK_LR = 1e-3

# Fewer points than this (after the cuts) is no curve to read a rate from.
MIN_POINTS = 5

# The loss must fall (or, for "flat", vary) by this fraction of its size to count.
FLAT_TOLERANCE = 0.01

# fastai's lr_find drops the last five points before suggesting (already diverging).
SKIP_END = 5


def check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ConfigError(f"unknown lr suggestion rule {rule!r}; use one of {', '.join(RULES)}")


def suggest(
    lrs: Sequence[float],
    losses: Sequence[float],
    rule: str = "valley",
    *,
    skip_begin: int | None = None,
    skip_end: int = SKIP_END,
    fallback: float = FALLBACK_LR,
) -> float:
    """The rate :func:`suggest_explained` picks (without its explanation)."""
    return suggest_explained(
        lrs, losses, rule, skip_begin=skip_begin, skip_end=skip_end, fallback=fallback
    )[0]


def suggest_explained(
    lrs: Sequence[float],
    losses: Sequence[float],
    rule: str = "valley",
    *,
    skip_begin: int | None = None,
    skip_end: int = SKIP_END,
    fallback: float = FALLBACK_LR,
) -> tuple[float, str]:
    """A learning rate read off a range test's (smoothed) curve by ``rule``, and the rule
    as it was applied: the rule's name, or the name and why ``fallback`` was used.

    As fastai's ``lr_find``: the curve is cut at its first non-finite loss (or rate),
    then its first ``skip_begin`` points (default: a tenth of them) and last ``skip_end``
    are dropped, unless that leaves fewer than :data:`MIN_POINTS`.  The result is always
    a finite rate within the rates tested (``fallback`` itself when none was).
    """
    check_rule(rule)
    x = np.asarray(lrs, dtype=float).reshape(-1)
    y = np.asarray(losses, dtype=float).reshape(-1)
    if len(x) != len(y):
        raise ConfigError(f"lr suggestion: {len(x)} learning rates but {len(y)} losses")
    good_lr = np.isfinite(x) & (x > 0)
    bad = ~(good_lr & np.isfinite(y))
    n = int(np.argmax(bad)) if bad.any() else len(x)
    if not n:
        return fallback, f"{rule} (no finite loss recorded: fallback {fallback:g})"
    x, y = x[:n], y[:n]
    begin = n // 10 if skip_begin is None else max(0, skip_begin)
    end = max(0, skip_end)
    if n - begin - end >= MIN_POINTS:
        x, y = x[begin : n - end], y[begin : n - end]

    def fall_back(reason: str, top: float) -> tuple[float, str]:
        value = float(min(max(fallback, float(x.min())), top))
        return value, f"{rule} ({reason}: fallback {value:.3g})"

    if np.any(np.diff(x) <= 0):
        raise ConfigError("lr suggestion: the learning rates must increase along the curve")
    if len(x) < MIN_POINTS:
        return fall_back(f"curve too short: {len(x)} points", float(x.max()))
    scale = max(abs(float(y[0])), 1e-12)
    if y[0] - y.min() < FLAT_TOLERANCE * scale:
        if y.max() - y.min() < FLAT_TOLERANCE * scale:
            return fall_back("loss flat over the sweep", float(x.max()))
        # It only rose: no rate above the lowest loss's is safe.
        return fall_back("loss never fell", float(x[int(np.argmin(y))]))
    if rule == "valley":
        idx = _valley(y)
        value = float(x[idx])
    elif rule == "steepest":
        value = float(x[int(np.argmin(np.gradient(y, np.log10(x))))])
    else:  # minimum/10, minimum/3
        lowest = float(x[int(np.argmin(y))])
        divisor = int(rule.split("/")[1])
        value = lowest / divisor
        if value < x.min():
            share = {10: "a tenth", 3: "a third"}[divisor]
            return float(x.min()), f"{rule} ({share} of {lowest:.3g} is below the rates tested)"
    return value, rule


def _valley(losses: np.ndarray) -> int:
    """fastai's ``valley``: the longest strictly decreasing subsequence of the curve (its
    length ``lds[i]`` ending at each point, the first longest kept) and the point
    ``int(s) + int(s / 2)`` after its start, ``s`` a third of its span.  The start is
    fastai's ``end - length`` (one before a contiguous run's first point), kept at 0
    or above; fastai lets it reach -1, the last and highest rate, on a flat curve."""
    n = len(losses)
    lds = np.ones(n, dtype=np.int64)
    for i in range(1, n):
        higher = losses[:i] > losses[i]
        if higher.any():
            lds[i] = int(lds[:i][higher].max()) + 1
    end = int(np.argmax(lds))
    start = max(0, end - int(lds[end]))
    sections = (end - start) / 3
    return start + int(sections) + int(sections / 2)

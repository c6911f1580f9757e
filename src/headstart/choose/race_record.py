"""What a race (:mod:`headstart.choose.race`) may spend and what it records.

:class:`RaceBudget` is ``--budget`` (seconds, a multiple of one fit, or no limit);
:class:`RaceEntry`, :class:`RaceRound` and :class:`RaceResult` are the race's record, as
``headstart.json`` keeps it; :func:`report_lines` reads that record back as lines of
``report.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from headstart.errors import ConfigError

__all__ = ["RaceBudget", "RaceEntry", "RaceResult", "RaceRound", "report_lines"]

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class RaceBudget:
    """How long a race may take: ``seconds``, or ``fits`` times one fit (the slowest fit
    of the first round), or neither (no limit)."""

    seconds: float | None = None
    fits: float | None = None

    @classmethod
    def parse(cls, value: RaceBudget | str | float | None) -> RaceBudget:
        """``"5x"`` (fits), ``"600"``, ``"600s"``, ``"10m"``, ``"1h"`` or a number
        (seconds), ``"none"`` or None (no limit)."""
        if value is None or isinstance(value, RaceBudget):
            return value or cls()
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not value > 0:
                raise ConfigError(f"--budget {value}: give a positive number of seconds")
            return cls(seconds=float(value))
        text = str(value).strip().lower()
        if text in ("none", "off", "unlimited", "inf"):
            return cls()
        match = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*(x|s|m|h|)", text)
        if match is None or not float(match.group(1)) > 0:
            raise ConfigError(
                f"--budget {value!r}: give a multiple of one fit (e.g. 5x), seconds (600, "
                "600s), minutes (10m) or hours (1h), or none"
            )
        number, unit = float(match.group(1)), match.group(2)
        if unit == "x":
            return cls(fits=number)
        return cls(seconds=number * _UNITS[unit])

    def limit_s(self, fit_s: float | None) -> float | None:
        """The limit in seconds, given one fit's seconds (None while none is measured:
        a budget in fits then allows the first fit)."""
        if self.seconds is not None:
            return self.seconds
        if self.fits is not None and fit_s is not None:
            return self.fits * fit_s
        return None

    def describe(self) -> str:
        if self.seconds is not None:
            return f"{self.seconds:g}s"
        if self.fits is not None:
            return f"{self.fits:g}x one fit"
        return "none"


@dataclass
class RaceEntry:
    """One plan in the race: what it sets, why it raced, its held-out accuracy, loss and
    seconds per fold trained (in fold order), and why it left the race ("" for the winner)."""

    label: str
    changes: dict[str, Any]
    reason: str
    accuracies: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # held-out cross-entropy per fold
    seconds: list[float] = field(default_factory=list)
    out: str = ""
    failed: str = ""  # a ConfigError's message: the plan cannot train on this backbone

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.accuracies)) if self.accuracies else None

    @property
    def mean_loss(self) -> float | None:
        return float(np.mean(self.losses)) if self.losses else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "changes": dict(self.changes),
            "reason": self.reason,
            "accuracies": list(self.accuracies),
            "losses": list(self.losses),
            "seconds": list(self.seconds),
            "mean_accuracy": self.mean,
            "mean_loss": self.mean_loss,
            "out": self.out,
            "failed": self.failed,
        }


@dataclass
class RaceRound:
    """One round: the fold (1-based), the plans trained on it, those kept, its seconds."""

    number: int
    fold: int
    trained: list[str]
    kept: list[str]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.number,
            "fold": self.fold,
            "trained": list(self.trained),
            "kept": list(self.kept),
            "seconds": self.seconds,
        }


@dataclass
class RaceResult:
    """What a race trained, what won and why it stopped.

    ``raced`` is False when no plan was trained (one plan open, or too few items per
    class for two folds): ``winner`` is then the first candidate and ``stopped`` says why.
    """

    winner: str
    changes: dict[str, Any]
    entries: list[RaceEntry]
    rounds: list[RaceRound]
    folds: int  # folds made (0 when skipped)
    folds_asked: int
    stopped: str
    budget: RaceBudget
    budget_s: float | None  # the limit in seconds as it stood at the end (None: none)
    fit_s: float | None  # one fit's seconds: the slowest fit of round 1
    total_s: float
    raced: bool
    n_items: int
    seed: int
    notes: list[str] = field(default_factory=list)

    def options(self) -> dict[str, Any]:
        """The fit options the winner sets (``options.replace(**result.options())``)."""
        return dict(self.changes)

    @property
    def fits(self) -> int:
        return sum(len(e.seconds) for e in self.entries)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: for ``headstart.json``'s ``race``."""
        return {
            "raced": self.raced,
            "winner": self.winner,
            "changes": dict(self.changes),
            "stopped": self.stopped,
            "folds": self.folds,
            "folds_asked": self.folds_asked,
            "n_items": self.n_items,
            "seed": self.seed,
            "budget": self.budget.describe(),
            "budget_s": self.budget_s,
            "fit_s": self.fit_s,
            "fits": self.fits,
            "total_s": self.total_s,
            "candidates": [e.to_dict() for e in self.entries],
            "rounds": [r.to_dict() for r in self.rounds],
            "notes": list(self.notes),
        }

    def describe(self) -> str:
        """A few lines for the log (and, through :func:`report_lines`, the report)."""
        return "\n".join(_lines(self.to_dict(), bullet="  "))


def report_lines(record: dict[str, Any] | None) -> list[str]:
    """A race as ``headstart.json`` records it (:meth:`RaceResult.to_dict`, or
    ``{"raced": False, "why": ...}`` where :func:`should_race` said no), as lines of
    ``report.md``: a heading, the plans with their fold accuracies, why it stopped."""
    if not record:
        return []
    return ["## The race of the open plans (--strategy auto)", *_lines(record, bullet="- "), ""]


def _lines(d: dict[str, Any], *, bullet: str) -> list[str]:
    if not d.get("raced"):  # also {"raced": False, "why": ...} where should_race said no
        why = d.get("stopped") or d.get("why") or "not raced"
        return [f"race: none, {why}" + (f"; {d['winner']} as recommended" if "winner" in d else "")]
    budget = d["budget"]
    if d["budget_s"] is not None and budget.endswith("one fit"):
        budget += f" = {d['budget_s']:.1f}s"
    lines = [
        f"race: {len(d['candidates'])} plans on {d['folds']} stratified folds of "
        f"{d['n_items']} training items (successive halving; budget {budget}): "
        f"{d['winner']} wins after {d['fits']} fits in {d['total_s']:.1f}s",
    ]
    for c in d["candidates"]:
        folds = " ".join(f"{a:.3f}" for a in c["accuracies"]) or "-"
        mean = f"mean {c['mean_accuracy']:.3f}" if c["mean_accuracy"] is not None else "no score"
        fate = "the winner" if c["label"] == d["winner"] else c["out"]
        lines.append(
            f"{bullet}{c['label']}: folds {folds}, {mean}, {sum(c['seconds']):.1f}s; {fate}"
        )
    lines.append(f"{bullet}stopped: {d['stopped']}")
    lines += [f"{bullet}note: {n}" for n in d["notes"]]
    return lines

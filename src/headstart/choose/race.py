"""``--strategy auto`` that checks itself: race the plans the measurements leave open.

:mod:`headstart.choose.recommend` names one of four cases from cheap measurements and
turns it into a plan, but on small data those measurements are noisy (a probe's
accuracy on 20 images moves 5 points with one image) and each case's plan has near
rivals (:meth:`~headstart.choose.recommend.Recommendation.candidates`).  Small data are
also what makes checking cheap, so there auto trains the rivals and keeps the winner:

* **the folds**: stratified k folds of the fit's *training* part (the fit's validation
  split stays unseen), the same for every plan (``validation_folds``: scikit-learn's
  ``StratifiedKFold``, seeded); each fold's held-out part validates and its last epoch is
  scored, as in ``compare`` (picking the best epoch on it would flatter every plan);
* **successive halving** (Jamieson & Talwalkar, "Non-stochastic Best Arm Identification
  and Hyperparameter Optimization", AISTATS 2016; the inner loop of Hyperband, Li et al.,
  JMLR 2018): round 1 trains every plan on fold 1; the better half (rounded up, so that
  three plans are not cut to one on a single small fold) goes on to the next fold, and is
  ranked by its mean held-out accuracy over the folds so far; until one plan is left or
  the folds run out.  A tie goes to the plan listed first (the recommended one);
* **the budget**: before each fit of round 1 and before each later round, the race
  projects its time from the fits measured so far and stops, keeping the current leader,
  where it would pass the budget: seconds, or a multiple of one fit (``5x``; one fit
  being the slowest fit of round 1, so that a budget in fits does not depend on which
  plans happen to be cheap).  ``5x`` lets a race of three plans finish (3 + 2 fits);
* **plans that cannot train** on this backbone (e.g. ``partial:K`` with K too large:
  a :class:`~headstart.errors.ConfigError`) leave the race with the reason; other errors
  stop it, as they would stop the fit.

Large data are decided from the measurements alone (:func:`should_race`).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from headstart.choose.rank_validate import validation_folds
from headstart.choose.recommend import Candidate
from headstart.config.fields import Select
from headstart.config.options import FitOptions
from headstart.data.labelled import LabeledData
from headstart.errors import ConfigError
from headstart.train.assemble import train_on
from headstart.train.budget import MAX_BATCH, MIN_EPOCHS, TARGET_STEPS

__all__ = [
    "DEFAULT_BUDGET",
    "DEFAULT_FOLDS",
    "RACE_MAX_ITEMS",
    "RaceBudget",
    "RaceEntry",
    "RaceResult",
    "RaceRound",
    "race",
    "report_lines",
    "should_race",
]

log = logging.getLogger(__name__)

# Up to here a fit's default budget (train.budget) is a fixed ~300 optimizer steps at a
# batch of at most 32: epochs are sized to TARGET_STEPS until MIN_EPOCHS binds, at
# TARGET_STEPS / MIN_EPOCHS = 60 steps an epoch, i.e. 60 x 32 = 1,920 training items.
# So up to about 2,000 items a race costs a fixed number of fits of a fixed size, however
# many items there are; beyond, every fit grows with the data, and so does the
# measurements' precision (a class of 200 items is "large", recommend.LARGE_PER_CLASS).
RACE_MAX_ITEMS = 2000
assert RACE_MAX_ITEMS >= TARGET_STEPS // MIN_EPOCHS * MAX_BATCH

# Three folds: each plan trains on two thirds of the training part, and a survivor of
# round 1 is scored on a second, disjoint third before the winner is named.
DEFAULT_FOLDS = 3

# A race of three plans is 3 fits in round 1 and 2 in round 2: five fits.
DEFAULT_BUDGET = "5x"

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
    """One plan in the race: what it sets, why it raced, its held-out accuracy and
    seconds per fold trained (in fold order), and why it left the race ("" for the winner)."""

    label: str
    changes: dict[str, Any]
    reason: str
    accuracies: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    out: str = ""
    failed: str = ""  # a ConfigError's message: the plan cannot train on this backbone

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.accuracies)) if self.accuracies else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "changes": dict(self.changes),
            "reason": self.reason,
            "accuracies": list(self.accuracies),
            "seconds": list(self.seconds),
            "mean_accuracy": self.mean,
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


def should_race(
    n_items: int,
    n_classes: int,
    *,
    n_candidates: int = 2,
    min_per_class: int | None = None,
    max_items: int = RACE_MAX_ITEMS,
) -> tuple[bool, str]:
    """Whether auto races the open plans on ``n_items`` training items, and why.

    Small data race (at most ``max_items``, :data:`RACE_MAX_ITEMS`: a fit's default
    budget is a fixed number of steps up to there, so the race's cost does not grow with
    the data); larger data are decided from the measurements alone.  No race either with
    one plan open, or with a class of fewer than 2 items (no two folds).
    """
    if n_candidates < 2:
        return False, "the measurements leave one plan open: nothing to race"
    if n_items > max_items:
        return False, (
            f"large data ({n_items} training items, more than {max_items}): decided from the "
            "measurements alone (each fit of a race would grow with the data)"
        )
    if min_per_class is not None and min_per_class < 2:
        return False, (
            f"a class has {min_per_class} training item: too few for two folds, decided from "
            "the measurements alone"
        )
    return True, (
        f"small data ({n_items} training items in {n_classes} classes, at most {max_items}): "
        f"the {n_candidates} plans the measurements leave open race on folds"
    )


def race(
    options: FitOptions,
    train_data: LabeledData,
    candidates: Sequence[Candidate],
    *,
    folds: int = DEFAULT_FOLDS,
    budget: RaceBudget | str | float | None = DEFAULT_BUDGET,
    seed: int | None = None,
) -> RaceResult:
    """Race ``candidates`` (the recommended plan first) by successive halving over
    ``folds`` stratified folds of ``train_data``; see the module's docs.

    ``options``: the fit's (``strategy`` may still be ``auto``); each fold fit is
    ``options`` with the candidate's changes, scored at its last epoch on the fold's
    held-out part, without early stopping.  ``budget``: a :class:`RaceBudget`, its text
    (``5x``, ``600s``, ``none``), seconds as a number, or None (no limit).  ``seed``: the
    folds' and the fits' (default ``options.seed``).  Raises :class:`ConfigError` when no
    candidate can train.
    """
    t0 = time.perf_counter()
    limit = RaceBudget.parse(budget)
    seed = options.seed if seed is None else seed
    entries = _entries(candidates)
    state = _Race(entries, limit)
    k, note = _fold_count(train_data, folds)
    if note:
        state.notes.append(note)
    skip = ""
    if len(entries) == 1:
        skip = "one plan open: nothing to race"
    elif k < 2:
        skip = f"skipped: {note}"
    if skip:
        log.info("race: %s", skip)
        return state.result(
            0, skip, raced=False, folds=0, folds_asked=folds, n=len(train_data), seed=seed, t0=t0
        )
    splits = validation_folds(train_data, k, seed)
    fold_options = options.replace(
        val_fraction=0.0, select=Select.LAST, patience=None, seed=seed, checkpoint_every=0
    )
    stopped = ""
    for r, (train_idx, test_idx) in enumerate(splits):
        if r > 0:
            stopped = state.over_budget_for_round(r)
            if stopped:
                break
        fold_train = train_data.subset(train_idx, note=f"race fold {r + 1} of {k}, train")
        fold_held = train_data.subset(test_idx, note=f"race fold {r + 1} of {k}, held out")
        stopped = state.run_round(r, fold_options, fold_train, fold_held)
        if stopped or len(state.alive) == 1:
            break
    if not stopped:
        left = len(state.alive)
        stopped = (
            f"one plan left after {len(state.rounds)} round{'s' if len(state.rounds) != 1 else ''}"
            if left == 1
            else f"the folds ran out with {left} plans left: the best mean held-out accuracy wins"
        )
    result = state.result(
        state.leader(),
        stopped,
        raced=True,
        folds=k,
        folds_asked=folds,
        n=len(train_data),
        seed=seed,
        t0=t0,
    )
    log.info("%s", result.describe())
    return result


def _entries(candidates: Sequence[Candidate]) -> list[RaceEntry]:
    """One entry per distinct plan, in the given order."""
    if not candidates:
        raise ConfigError("race: no candidate plans to race")
    seen: set[str] = set()
    entries = []
    for c in candidates:
        if c.label not in seen:
            seen.add(c.label)
            entries.append(RaceEntry(c.label, dict(c.changes), c.reason))
    return entries


def _fold_count(data: LabeledData, folds: int) -> tuple[int, str]:
    """The folds the data allow (each class in every held-out part), and a note when
    fewer than ``folds``."""
    if folds < 2:
        raise ConfigError(f"race: folds must be at least 2 (got {folds})")
    counts = np.bincount(data.targets, minlength=len(data.classes))
    smallest = int(counts.min())
    if smallest >= folds:
        return folds, ""
    worst = data.classes[int(counts.argmin())]
    if smallest >= 2:
        return smallest, (
            f"{smallest} folds instead of {folds}: class {worst!r} has {smallest} training items"
        )
    return smallest, (
        f"class {worst!r} has {smallest} training item{'s' if smallest != 1 else ''}; "
        "a race needs at least 2 in every class (two folds)"
    )


class _Race:
    """The race's state: the entries, those still in (by index), the rounds, the time."""

    def __init__(self, entries: list[RaceEntry], budget: RaceBudget) -> None:
        self.entries = entries
        self.budget = budget
        self.alive = list(range(len(entries)))
        self.rounds: list[RaceRound] = []
        self.elapsed = 0.0  # the fits' own seconds, summed
        self.fit_s: float | None = None  # one fit: the slowest of round 1 so far
        self.notes: list[str] = []

    def ranked(self, indices: Sequence[int]) -> list[int]:
        """Best mean held-out accuracy first; a tie to the plan listed first."""

        def key(i: int) -> tuple[float, int]:
            mean = self.entries[i].mean
            return (-round(mean, 9) if mean is not None else math.inf, i)

        return sorted(indices, key=key)

    def leader(self) -> int:
        return self.ranked(self.alive)[0]

    def over_budget_for_round(self, r: int) -> str:
        """Why round ``r`` (0-based) would pass the budget, or ""."""
        projected = self.elapsed + sum(self._estimate(i) for i in self.alive)
        limit = self.budget.limit_s(self.fit_s)
        if limit is None or projected <= limit:
            return ""
        return (
            f"budget: fold {r + 1} for {len(self.alive)} plans would take the race to about "
            f"{projected:.1f}s, past {limit:.1f}s ({self.budget.describe()}); the leader "
            "so far wins"
        )

    def _estimate(self, i: int) -> float:
        """Seconds of plan ``i``'s next fit: its own fits' mean, else one fit's."""
        own = self.entries[i].seconds
        return float(np.mean(own)) if own else (self.fit_s or 0.0)

    def run_round(
        self, r: int, options: FitOptions, fold_train: LabeledData, fold_held: LabeledData
    ) -> str:
        """Train the plans still in on fold ``r``, keep the better half; why the race
        stops here (a budget reached mid-round, in round 1), or ""."""
        t0 = time.perf_counter()
        trained: list[int] = []
        stopped = ""
        for i in list(self.alive):
            if r == 0 and trained:
                limit = self.budget.limit_s(self.fit_s)
                projected = self.elapsed + (self.fit_s or 0.0)
                if limit is not None and projected > limit:
                    stopped = (
                        f"budget: a fit of {self.entries[i].label} would take the race to "
                        f"about {projected:.1f}s, past {limit:.1f}s "
                        f"({self.budget.describe()}); the leader so far wins"
                    )
                    break
            if self._fit(i, r, options, fold_train, fold_held):
                trained.append(i)
                if r == 0:
                    self.fit_s = max(self.fit_s or 0.0, self.entries[i].seconds[-1])
        if stopped:
            for i in self.alive:
                if i not in trained:
                    self.entries[i].out = f"not trained: {stopped}"
        self.alive = [i for i in self.alive if i in trained]
        if not self.alive:
            failures = "; ".join(f"{e.label}: {e.failed}" for e in self.entries if e.failed)
            raise ConfigError(f"no plan could train on this data: {failures}")
        ranked = self.ranked(self.alive)
        keep = ranked[:1] if stopped else ranked[: max(1, math.ceil(len(ranked) / 2))]
        for place, i in enumerate(ranked, 1):
            if i not in keep:
                mean = self.entries[i].mean
                self.entries[i].out = (
                    f"out after fold {r + 1}: mean held-out accuracy {mean:.3f}, "
                    f"{_ordinal(place)} of {len(ranked)}"
                )
        self.rounds.append(
            RaceRound(
                number=r + 1,
                fold=r + 1,
                trained=[self.entries[i].label for i in trained],
                kept=[self.entries[i].label for i in keep],
                seconds=time.perf_counter() - t0,
            )
        )
        self.alive = sorted(keep)
        return stopped

    def _fit(
        self,
        i: int,
        r: int,
        options: FitOptions,
        fold_train: LabeledData,
        fold_held: LabeledData,
    ) -> bool:
        """Train plan ``i`` on fold ``r``; False (and the entry out) when it cannot train."""
        entry = self.entries[i]
        try:
            trained = train_on(options.replace(**entry.changes), fold_train, fold_held)
        except ConfigError as exc:
            entry.failed = str(exc)
            entry.out = f"cannot train: {exc}"
            log.info("race: %s cannot train: %s", entry.label, exc)
            return False
        accuracy = float(trained.metrics["val_acc"])
        # the fit's own measure of its time: loading (source, loaders, range test) + training
        seconds = float(sum(trained.timings.get(k, 0.0) for k in ("load_s", "train_s")))
        entry.accuracies.append(accuracy)
        entry.seconds.append(seconds)
        self.elapsed += seconds
        log.info(
            "race fold %d: %-24s held-out accuracy %.3f (%.1fs)",
            r + 1,
            entry.label,
            accuracy,
            seconds,
        )
        return True

    def result(
        self,
        winner: int,
        stopped: str,
        *,
        raced: bool,
        folds: int,
        folds_asked: int,
        n: int,
        seed: int,
        t0: float,
    ) -> RaceResult:
        entry = self.entries[winner]
        entry.out = ""
        return RaceResult(
            winner=entry.label,
            changes=dict(entry.changes),
            entries=self.entries,
            rounds=self.rounds,
            folds=folds,
            folds_asked=folds_asked,
            stopped=stopped,
            budget=self.budget,
            budget_s=self.budget.limit_s(self.fit_s),
            fit_s=self.fit_s,
            total_s=time.perf_counter() - t0,
            raced=raced,
            n_items=n,
            seed=seed,
            notes=list(self.notes),
        )


def _ordinal(n: int) -> str:
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(n % 10 if n % 100 not in (11, 12, 13) else 0, "th")
    return f"{n}{suffix}"


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

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
  the folds run out.  A tie goes to ``scratch``, the plan that does not use the source,
  where it races (the source is in doubt: the measurements found it dissimilar): two
  means within half a held-out item of each other (accuracy on a fold of 33 images moves
  in steps of 3 points) are no evidence that the source helps, and a source that does
  not help is the negative transfer the race is there to catch.  Measured with
  bench/race_regret.py (every plan on every fold, each alone on the test set; RESULTS.md
  "Does the race pick well?"), the mean regret against the best plan on the test set went
  from 0.37 to 0 points over 12 seeds of shifted digits, stayed 0.23 on clip-art (6
  seeds) and went from 0.27 to 0.35 on digits 5-9 (6 seeds, where the plans are within a
  point and a source plan wins by a few tenths).
  Other ties go to the lower mean held-out loss, then to the plan listed first (the
  recommended one);
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

import functools
import logging
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headstart.choose.plans import Candidate
from headstart.choose.race_record import (
    RaceBudget,
    RaceEntry,
    RaceResult,
    RaceRound,
    report_lines,
)
from headstart.choose.race_trials import (
    FoldFit,
    fit_on_fold,
    fold_options,
    fold_parts,
    round_on_trials,
)
from headstart.config.options import FitOptions
from headstart.config.strategies import strategy_of
from headstart.data.labelled import LabeledData
from headstart.errors import ConfigError
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
    seed = options.seed if seed is None else seed
    entries = _entries(candidates)
    k, note = _fold_count(train_data, folds)
    # half a held-out item, as accuracy: a fold holds out about n / k items
    state = _Race(entries, RaceBudget.parse(budget), tie=0.5 * k / max(1, len(train_data)))
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
    stopped = _run_rounds(state, options, train_data, k, seed)
    state.leader_note()
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


def _run_rounds(
    state: _Race, options: FitOptions, train_data: LabeledData, k: int, seed: int
) -> str:
    """Successive halving over ``k`` folds of ``train_data``; why the race stopped."""
    per_fold = fold_options(options, seed)
    workers = options.trials_in_parallel
    with tempfile.TemporaryDirectory(prefix="headstart-race-") as tmp:
        for r in range(k):
            if r > 0:
                stopped = state.over_budget_for_round(r)
                if stopped:
                    return stopped
            fold_train, fold_held = fold_parts(train_data, k, seed, r)
            trials = None
            if workers > 1:
                trials = functools.partial(
                    round_on_trials, per_fold, train_data, k=k, seed=seed, r=r,
                    workers=workers, journal=str(Path(tmp) / "race.log"),
                )  # fmt: skip
            stopped = state.run_round(r, per_fold, fold_train, fold_held, trials)
            if stopped:
                return stopped
            if len(state.alive) == 1:
                break
    left, rounds = len(state.alive), len(state.rounds)
    if left == 1:
        return f"one plan left after {rounds} round{'s' if rounds != 1 else ''}"
    return f"the folds ran out with {left} plans left: the best mean held-out accuracy wins"


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

    def __init__(self, entries: list[RaceEntry], budget: RaceBudget, *, tie: float) -> None:
        self.entries = entries
        self.budget = budget
        self.alive = list(range(len(entries)))
        self.rounds: list[RaceRound] = []
        self.elapsed = 0.0  # the fits' own seconds, summed
        self.fit_s: float | None = None  # one fit: the slowest of round 1 so far
        self.notes: list[str] = []
        self.tie = tie  # means this close are a tie (which scratch wins where it races)

    def ranked(self, indices: Sequence[int], *, scratch_ties: bool = True) -> list[int]:
        """Best mean held-out accuracy first; ``scratch`` wins a tie (within ``tie``:
        common, a third of 100 items moves accuracy in steps of 3 points); other ties go
        to the lower mean held-out loss, which every item moves a little; then to the
        plan listed first."""

        def key(i: int) -> tuple[float, float, int]:
            mean, loss = self.entries[i].mean, self.entries[i].mean_loss
            if mean is not None and scratch_ties and _no_source(self.entries[i]):
                mean += self.tie
            return (
                -round(mean, 9) if mean is not None else math.inf,
                round(loss, 9) if loss is not None else math.inf,
                i,
            )

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

    def leader_note(self) -> None:
        """A note when the tie rule named the winner among the plans left (folds ran out)."""
        if len(self.alive) > 1:
            plain = self.ranked(self.alive, scratch_ties=False)[0]
            if plain != self.leader():
                self.notes.append(self._tie_note("at the end", [self.leader()], [plain]))

    def _tie_note(self, when: str, keep: list[int], by_accuracy: list[int]) -> str:
        """What the tie rule decided (``when``), with the means it weighed."""
        kept = [i for i in keep if i not in by_accuracy]
        instead = [i for i in by_accuracy if i not in keep]

        def said(ids: list[int]) -> str:
            return ", ".join(f"{self.entries[i].label} {self.entries[i].mean:.3f}" for i in ids)

        return (
            f"{when}: {said(kept)} kept over {said(instead)} on a tie (within half "
            f"a held-out item, {self.tie:.3f}): no evidence that the source helps"
        )

    def _estimate(self, i: int) -> float:
        """Seconds of plan ``i``'s next fit: its own fits' mean, else one fit's."""
        own = self.entries[i].seconds
        return float(np.mean(own)) if own else (self.fit_s or 0.0)

    def run_round(
        self,
        r: int,
        options: FitOptions,
        fold_train: LabeledData,
        fold_held: LabeledData,
        trials: Callable[[dict[int, dict[str, Any]]], dict[int, FoldFit]] | None = None,
    ) -> str:
        """Train the plans still in on fold ``r`` (one after another, or all at once as
        ``trials``), keep the better half; why the race stops here (a budget reached
        mid-round, in round 1, one after another), or ""."""
        t0 = time.perf_counter()
        if trials is not None:
            trained, stopped = self._train_together(r, trials), ""
        else:
            trained, stopped = self._train_one_by_one(r, options, fold_train, fold_held)
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
        plain = self.ranked(self.alive, scratch_ties=False)
        tied_out = set(plain[: len(keep)]) - set(keep)
        if tied_out:
            self.notes.append(self._tie_note(f"after fold {r + 1}", keep, plain[: len(keep)]))
        for place, i in enumerate(ranked, 1):
            if i not in keep:
                mean = self.entries[i].mean
                self.entries[i].out = (
                    f"out after fold {r + 1}: mean held-out accuracy {mean:.3f}, "
                    f"{_ordinal(place)} of {len(ranked)}"
                    + (" (a tie with scratch, which wins ties)" if i in tied_out else "")
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

    def _train_together(
        self, r: int, trials: Callable[[dict[int, dict[str, Any]]], dict[int, FoldFit]]
    ) -> list[int]:
        """Every plan still in, trained on fold ``r`` as trials; those that trained."""
        fits = trials({i: self.entries[i].changes for i in self.alive})
        trained = [i for i in self.alive if self._record(i, r, fits[i])]
        if r == 0 and trained:
            self.fit_s = max(self.entries[i].seconds[-1] for i in trained)
        return trained

    def _train_one_by_one(
        self, r: int, options: FitOptions, fold_train: LabeledData, fold_held: LabeledData
    ) -> tuple[list[int], str]:
        """The plans still in, trained on fold ``r`` one after another; those that trained,
        and why round 1 stopped before the rest (its budget), or ""."""
        trained: list[int] = []
        for i in list(self.alive):
            if r == 0 and trained:
                limit = self.budget.limit_s(self.fit_s)
                projected = self.elapsed + (self.fit_s or 0.0)
                if limit is not None and projected > limit:
                    return trained, (
                        f"budget: a fit of {self.entries[i].label} would take the race to "
                        f"about {projected:.1f}s, past {limit:.1f}s "
                        f"({self.budget.describe()}); the leader so far wins"
                    )
            fit = fit_on_fold(options, self.entries[i].changes, fold_train, fold_held)
            if self._record(i, r, fit):
                trained.append(i)
                if r == 0:
                    self.fit_s = max(self.fit_s or 0.0, self.entries[i].seconds[-1])
        return trained, ""

    def _record(self, i: int, r: int, fit: FoldFit) -> bool:
        """Plan ``i``'s fit on fold ``r``; False (and the entry out) when it cannot train."""
        entry = self.entries[i]
        if fit["failed"]:
            entry.failed = fit["failed"]
            entry.out = f"cannot train: {fit['failed']}"
            log.info("race: %s cannot train: %s", entry.label, fit["failed"])
            return False
        accuracy, seconds = float(fit["accuracy"]), float(fit["seconds"])
        entry.accuracies.append(accuracy)
        entry.losses.append(float(fit["loss"]))
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


def _no_source(entry: RaceEntry) -> bool:
    """Whether ``entry``'s plan starts from random weights (``scratch``)."""
    return strategy_of(str(entry.changes.get("strategy", ""))).reinitialise


def _ordinal(n: int) -> str:
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(n % 10 if n % 100 not in (11, 12, 13) else 0, "th")
    return f"{n}{suffix}"

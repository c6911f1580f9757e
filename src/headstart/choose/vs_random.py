"""A source's score against a baseline's on the same examples: the difference, its
standard error, and whether the source is clearly above.

``rank`` draws its random-initialisation line with it: each pretrained candidate is
compared with its own network at random initialisation, and one not clearly above it is
no better than random features of that network (negative transfer ahead).  A score that
is a mean over examples pairs the examples' terms; LogME, which is not, gets its standard
error from the delete-half jackknife over random stratified halves.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from headstart.choose.rankers import RANKERS, ScoreResult
from headstart.errors import ConfigError
from headstart.features.extract import Features

__all__ = ["CLEARLY_ABOVE_Z", "HALF_SAMPLES", "Comparison", "compare_features"]


# How many standard errors above a baseline a score must be to count as better than it:
# the one-sided 95% point of the normal distribution.
CLEARLY_ABOVE_Z = 1.645


# Random halves for the standard error of a score that is not a mean over examples.
HALF_SAMPLES = 20


@dataclass(frozen=True)
class Comparison:
    """One method's score of a candidate minus a baseline's, on the same examples.

    ``se`` is the standard error of that difference, from the examples' paired terms
    (``how="per item"``) or from random halves of the data (``how="half samples"``);
    the candidate is ``above`` the baseline when the difference is positive by more
    than :data:`CLEARLY_ABOVE_Z` standard errors.
    """

    difference: float
    se: float
    how: str

    @property
    def above(self) -> bool:
        return self.difference > 0 and self.difference > CLEARLY_ABOVE_Z * self.se

    @property
    def z(self) -> float | None:
        return None if self.se <= 0 else self.difference / self.se

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "z": self.z, "above": self.above}


def compare_features(
    candidate: Features,
    baseline: Features,
    method: str,
    *,
    seed: int = 0,
    scored: tuple[ScoreResult | None, ScoreResult | None] = (None, None),
) -> Comparison | None:
    """``method``'s score on ``candidate`` minus its score on ``baseline`` (features of
    the same examples, in the same order), with the standard error of the difference.

    A score that is a mean over examples (LEEP, k-NN and linear-probe accuracy) pairs
    the examples' terms: the mean of the differences, and their standard deviation over
    sqrt(N).  LogME is not such a mean; its standard error is the delete-d jackknife's
    with d = N/2 (Shao & Wu, Ann. Statist. 1989), over :data:`HALF_SAMPLES` random
    stratified halves: the spread of the halves' differences around their mean, times
    ``(N - d) / d``.  ``scored``: the two sides' results of :func:`score_features`
    for ``method``, where already computed, so that their value and per-example terms
    are not computed again.  None when ``method`` needs class probabilities one side
    lacks.
    Raises :class:`ConfigError` when the two do not describe the same examples.
    """
    ranker = RANKERS.get(method)
    if ranker.needs_source_probs and (
        candidate.source_probs is None or baseline.source_probs is None
    ):
        return None
    if not np.array_equal(candidate.targets, baseline.targets):
        raise ConfigError("compare_features: the two feature sets are not of the same examples")
    n = len(candidate.targets)
    sides = list(zip((candidate, baseline), scored, strict=True))
    if ranker.per_item is not None:
        per_item = ranker.per_item
        ours, theirs = (
            per_item(f, seed) if done is None or done.terms is None else done.terms
            for f, done in sides
        )
        diff = ours - theirs
        se = float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
        return Comparison(difference=float(diff.mean()), se=se, how="per item")
    ours_value, theirs_value = (
        ranker.score(f, seed) if done is None or done.value is None else done.value
        for f, done in sides
    )
    full = ours_value - theirs_value
    diffs = []
    kept = 0
    for half in _halves(candidate.targets, seed):
        kept = len(half)
        diffs.append(
            ranker.score(_subset(candidate, half), seed)
            - ranker.score(_subset(baseline, half), seed)
        )
    if len(diffs) < 2:
        return Comparison(difference=float(full), se=math.inf, how="half samples")
    spread = np.asarray(diffs)
    se = math.sqrt(kept / (n - kept) * float(((spread - spread.mean()) ** 2).mean()))
    return Comparison(difference=float(full), se=se, how="half samples")


def _halves(targets: np.ndarray, seed: int) -> list[np.ndarray]:
    """:data:`HALF_SAMPLES` random halves of the examples, each keeping every class;
    none where a class has fewer than 2 examples (no half could keep it and leave it)."""
    from sklearn.model_selection import StratifiedShuffleSplit

    counts = np.unique(targets, return_counts=True)[1]
    if len(targets) < 4 or counts.min() < 2:
        return []
    splitter = StratifiedShuffleSplit(n_splits=HALF_SAMPLES, train_size=0.5, random_state=seed)
    return [kept for kept, _ in splitter.split(targets, targets)]


def _subset(features: Features, rows: np.ndarray) -> Features:
    probs = features.source_probs
    return Features(
        features=features.features[rows],
        targets=features.targets[rows],
        source_probs=None if probs is None else probs[rows],
    )

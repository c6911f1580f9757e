"""The transferability scores by name: the registry ``rank --method`` chooses from, and
the running of the chosen ones on a source's features, each timed.

Each :class:`Ranker` wraps a function of :mod:`headstart.choose.scores` as a function of
:class:`~headstart.features.extract.Features`; a score that is a mean over the examples
also gives the examples' terms, which :mod:`headstart.choose.vs_random` pairs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from headstart.choose.scores import (
    NO_SOURCE_HEAD,
    knn_accuracy,
    knn_correct,
    leep,
    leep_per_item,
    linear_probe_accuracy,
    linear_probe_correct,
    logme,
)
from headstart.data.labelled import LabeledData
from headstart.errors import ConfigError
from headstart.features.extract import Features, extract_features
from headstart.registry import Registry
from headstart.sources.base import Source

__all__ = ["RANKERS", "Ranker", "ScoreResult", "score_features", "score_source"]


@dataclass(frozen=True)
class Ranker:
    """A named transferability score: ``score(features, seed)``, higher is better.

    ``per_item(features, seed)``, where the score is a mean over the examples, gives the
    examples' terms [N] (for the paired standard error of
    :func:`headstart.choose.vs_random.compare_features`)."""

    score: Callable[[Features, int], float]
    summary: str
    needs_source_probs: bool = False
    per_item: Callable[[Features, int], np.ndarray] | None = None


RANKERS: Registry[Ranker] = Registry("ranking method", ConfigError)


RANKERS.register(
    "logme",
    Ranker(
        score=lambda f, seed: logme(f.features, f.targets),
        summary="LogME: evidence of a Bayesian linear model on the features (You et al. 2021)",
    ),
)


RANKERS.register(
    "leep",
    Ranker(
        score=lambda f, seed: leep(f.source_probs, f.targets),
        summary="LEEP: target likelihood from the source classifier's outputs (Nguyen et al. 2020)",
        needs_source_probs=True,
        per_item=lambda f, seed: leep_per_item(f.source_probs, f.targets),
    ),
)


RANKERS.register(
    "knn",
    Ranker(
        score=lambda f, seed: knn_accuracy(f.features, f.targets, seed=seed),
        summary="cross-validated accuracy of a 5-nearest-neighbour classifier (cosine)",
        per_item=lambda f, seed: knn_correct(f.features, f.targets, seed=seed),
    ),
)


RANKERS.register(
    "linear-probe",
    Ranker(
        score=lambda f, seed: linear_probe_accuracy(f.features, f.targets, seed=seed),
        summary="cross-validated accuracy of a logistic regression on the features",
        per_item=lambda f, seed: linear_probe_correct(f.features, f.targets, seed=seed),
    ),
)


@dataclass(frozen=True)
class ScoreResult:
    """One method's score of one source: ``value`` (None when skipped, ``note`` says
    why), and the seconds the method took on features already extracted."""

    value: float | None
    seconds: float
    note: str = ""
    # the examples' terms [N] of a score that is their mean (Ranker.per_item), kept for
    # compare_features; not part of the record
    terms: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "seconds": self.seconds, "note": self.note}


def _method_names(methods: Sequence[str] | None) -> list[str]:
    if isinstance(methods, str):  # a lone name would otherwise be read letter by letter
        methods = [methods]
    names = list(dict.fromkeys(methods)) if methods else RANKERS.names()
    for name in names:
        RANKERS.get(name)  # raises, listing the valid names
    return names


def score_features(
    features: Features, *, methods: Sequence[str] | None = None, seed: int = 0
) -> dict[str, ScoreResult]:
    """Each of ``methods`` (default: all registered) on ``features``, timed.

    A method that needs the source's class probabilities gets ``value=None`` and a note
    when ``features.source_probs`` is None.  Other errors propagate.
    """
    results: dict[str, ScoreResult] = {}
    for name in _method_names(methods):
        ranker = RANKERS.get(name)
        if ranker.needs_source_probs and features.source_probs is None:
            results[name] = ScoreResult(value=None, seconds=0.0, note=f"skipped: {NO_SOURCE_HEAD}")
            continue
        t0 = time.perf_counter()
        if ranker.per_item is not None:
            terms = ranker.per_item(features, seed)
            results[name] = ScoreResult(
                value=float(terms.mean()), seconds=time.perf_counter() - t0, terms=terms
            )
        else:
            value = ranker.score(features, seed)
            results[name] = ScoreResult(value=value, seconds=time.perf_counter() - t0)
    return results


def score_source(
    source: Source,
    data: LabeledData,
    *,
    methods: Sequence[str] | None = None,
    seed: int = 0,
    batch_size: int = 128,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, ScoreResult]:
    """Extract ``source``'s features of ``data`` once, then run each of ``methods``.

    ``seconds`` in each result is the method alone; the one feature extraction they
    share is not in it (time :func:`extract_features` and :func:`score_features`
    separately to see both).  Raises :class:`ConfigError` for an unknown method.
    """
    names = _method_names(methods)
    need_probs = any(RANKERS.get(n).needs_source_probs for n in names)
    features = extract_features(
        source,
        data,
        batch_size=batch_size,
        device=device,
        with_source_logits=need_probs,
        progress=progress,
    )
    results = score_features(features, methods=names, seed=seed)
    if need_probs and source.old_head is not None and not source.weights.pretrained:
        for name in names:
            if RANKERS.get(name).needs_source_probs:
                results[name] = ScoreResult(
                    value=results[name].value,
                    seconds=results[name].seconds,
                    note="the source's classifier head is randomly initialised",
                )
    return results

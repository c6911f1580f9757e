"""``rank --validate``: fine-tune every candidate on stratified k folds of the target data
(``train_on``, the same machinery as ``fit`` and ``compare``), and measure with Kendall's
tau how well each score's order predicted the fine-tuned one.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from typing import Any

import numpy as np

from headstart.choose.candidates import CandidateResult, ranked
from headstart.config.options import RankOptions
from headstart.data.labelled import LabeledData
from headstart.errors import DataError
from headstart.train.assemble import MIN_STEPS, train_on
from headstart.train.budget import size_budget, steps_per_epoch

__all__ = ["finetune_on_folds", "kendall_taus", "validation_epochs", "validation_folds"]

log = logging.getLogger(__name__)


def validation_folds(
    data: LabeledData, folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``folds`` stratified folds of ``data`` as (train, held-out) indices.

    Raises :class:`ConfigError` for fewer than 2 folds and :class:`DataError` when a
    class has fewer examples than there are folds.
    """
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(data.targets, minlength=len(data.classes))
    if int(counts.min()) < folds:
        worst = data.classes[int(counts.argmin())]
        raise DataError(
            f"{data.spec}: class {worst!r} has {int(counts.min())} examples, fewer than "
            f"--folds {folds}; use fewer folds or add data"
        )
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(data.targets, data.targets))


def validation_epochs(options: RankOptions, splits: list[tuple[np.ndarray, np.ndarray]]) -> int:
    """``--epochs``, raised where needed so that every fold's fine-tuning takes at least
    ``MIN_STEPS`` optimizer steps (the count below which ``fit`` warns that a new head
    may not converge): with 5 images per class a fold's training part is one batch, and
    ten epochs would be ten steps, a measure of how far each candidate got in ten steps
    rather than of what fine-tuning it gives."""

    smallest = min(len(train) for train, _ in splits)
    budget = size_budget(smallest, 0, batch_size=options.batch_size, epochs=options.epochs)
    return max(budget.epochs, math.ceil(MIN_STEPS / steps_per_epoch(smallest, budget.batch_size)))


def finetune_on_folds(
    result: CandidateResult,
    data: LabeledData,
    options: RankOptions,
    splits: list[tuple[np.ndarray, np.ndarray]],
) -> None:
    """Fine-tune ``result``'s candidate on each fold's training part and record its
    held-out accuracy per fold, the seconds and the CPU seconds, in ``result``."""
    # the held-out fold validates and its last epoch is scored (RankOptions.FIT_FIXED)
    fold_options = options.fit_options(source=result.source, weights=result.weights)
    if result.random_init:
        # A random backbone has nothing to preserve: it trains at the head's rate, as
        # `fit --strategy scratch` would train it, not at the slower rate that protects
        # pretrained weights (which would handicap the random baseline).
        fold_options = replace(fold_options, backbone_lr_mult=1.0)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    for fold, (train_idx, test_idx) in enumerate(splits):
        trained = train_on(
            fold_options,
            data.subset(train_idx, note=f"fold {fold + 1} train"),
            data.subset(test_idx, note=f"fold {fold + 1} held out"),
        )
        result.fold_accuracies.append(float(trained.metrics["val_acc"]))
    result.finetune_s = time.perf_counter() - t0
    result.finetune_cpu_s = time.process_time() - cpu0
    log.info(
        "%s: fine-tuned (%s, %d epochs) accuracy %.3f over %d folds (%.1fs)",
        result.candidate,
        options.strategy,
        options.epochs,
        result.accuracy,
        len(splits),
        result.finetune_s,
    )


def kendall_taus(candidates: list[CandidateResult], methods: list[str]) -> dict[str, Any]:
    """Per method: Kendall's tau-b between the order the method ranks the candidates in
    (:func:`ranked`, with the random-initialisation line) and their fine-tuned
    accuracies; ``score_tau`` is the same for the raw scores alone.

    ``tau`` is None (with a note) when a score is missing for some candidate or either
    side is constant, where tau is undefined.
    """
    from scipy.stats import kendalltau

    accs = [c.accuracy for c in candidates]
    out: dict[str, Any] = {}
    for m in methods:
        values = [c.scores[m].value for c in candidates]
        if any(v is None for v in values) or any(a is None for a in accs):
            out[m] = {
                "tau": None,
                "p_value": None,
                "score_tau": None,
                "note": "not scored for every candidate",
            }
            continue
        if len(set(values)) < 2 or len(set(accs)) < 2:
            out[m] = {
                "tau": None,
                "p_value": None,
                "score_tau": None,
                "note": "undefined: the scores or the accuracies are all equal",
            }
            continue
        order = ranked(candidates, m)
        place = [-order.index(c) for c in candidates]  # higher is better, as a score
        res = kendalltau(place, accs)
        tau, p = float(res.statistic), float(res.pvalue)
        score_tau = float(kendalltau(values, accs).statistic)
        out[m] = {
            "tau": None if math.isnan(tau) else tau,
            "p_value": None if math.isnan(p) else p,
            "score_tau": None if math.isnan(score_tau) else score_tau,
            "note": "",
        }
    return out

"""``headstart compare``: cross-validate strategies on the same folds and say which wins.

Every strategy is trained on exactly the same stratified k folds (scikit-learn's
``StratifiedKFold``, optionally repeated with other shuffles), scored on the held-out
fold at the last epoch, and summarised as mean +- std.  Each strategy is then compared
with the best one *pairwise* (fold by fold), with a 95% confidence interval from the
corrected resampled t-test of Nadeau & Bengio (2003, "Inference for the Generalization
Error"): k-fold scores share most of their training data, so the plain t-test's
variance is too small; theirs is inflated by ``n_test / n_train``.

``auto`` may be one of the strategies: in each fold, :mod:`headstart.choose.recommend` measures
that fold's *training* part only (the held-out fold stays unseen, as it would be for a
user's new data) and the strategy it picks is trained; each score records the choice.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from headstart._progress import inner, open_bar
from headstart.choose.comparison import (
    CompareResult,
    FoldScore,
    run_config,
    study_config,
    summarise,
    write_comparison,
)
from headstart.choose.recommend import recommend_for
from headstart.choose.trials import JOURNAL, Grid, RunTrial, Study, run_trials
from headstart.config.options import CompareOptions, FitOptions
from headstart.config.strategies import is_auto, parse_strategy, strategy_of
from headstart.data.checks import data_checks
from headstart.data.labelled import LabeledData
from headstart.errors import ConfigError, DataError
from headstart.rundir import input_paths, prepare_out, writing
from headstart.train.assemble import check_options, load_training_data, train_on
from headstart.train.tracking import Tracker, open_tracker

__all__ = ["compare"]

log = logging.getLogger(__name__)

# The default study of --trials-in-parallel, in --out: Optuna's journal file
STUDY_FILE = "trials.log"


def _strategies(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise ConfigError("--strategies is empty; e.g. --strategies linear,full,scratch")
    for name in names:
        if not is_auto(name):
            parse_strategy(name)
    if len(set(names)) != len(names):
        raise ConfigError(f"--strategies names a strategy twice: {text}")
    return names


def _fractions(text: str) -> list[float]:
    try:
        values = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise ConfigError(
            f"--label-fractions {text!r}: give numbers, e.g. 0.1,0.25,0.5,1"
        ) from None
    if not values or values[0] <= 0 or values[-1] > 1:
        raise ConfigError(f"--label-fractions {text!r}: each must be in (0, 1]")
    if values[-1] != 1.0:
        values.append(1.0)  # the full folds are what the main table compares
    return values


def _subsample(targets: np.ndarray, idx: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stratified share of ``idx``: ``fraction`` of each class, at least one example."""
    if fraction == 1.0:
        return idx
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for label in np.unique(targets[idx]):
        members = idx[targets[idx] == label]
        n = max(1, round(fraction * len(members)))
        keep.extend(rng.choice(members, size=n, replace=False).tolist())
    return np.sort(np.asarray(keep, dtype=np.int64))


def compare(options: CompareOptions) -> CompareResult:
    """Cross-validate ``options.strategies`` on the same folds; write the comparison.

    With ``options.mlflow_uri`` / ``options.tensorboard`` one tracked run holds every
    fold's per-epoch metrics (``STRATEGY/foldK/val_acc``), each fold's score and the
    summary (``STRATEGY/mean_accuracy``), and the comparison's files.
    """

    out = options.out or f"runs/compare-{time.strftime('%Y%m%d-%H%M%S')}"
    options = options.replace(out=out)
    with writing(out, inputs=input_paths(options)), open_tracker(options) as tracker:
        return _compare(options, tracker)


def _compare(options: CompareOptions, tracker: Tracker) -> CompareResult:
    """Check everything a fold could trip on, train every fold, then write and log."""
    t0 = time.perf_counter()
    strategies = _strategies(options.strategies)
    assert options.out is not None  # named by compare()
    out = Path(options.out)
    if not _stopped_study(out, options):
        out = prepare_out(
            out,
            overwrite=options.overwrite,
            inputs=input_paths(options),
            marker="compare.json",
            what="comparison",
        )
    for strategy in strategies:
        check_options(_as_strategy(options, strategy))
    data = load_training_data(_as_strategy(options, strategies[0]))
    checks = data_checks(data, data, None)
    _check_fold_sizes(data, options)
    fractions = _fractions(options.label_fractions)
    tracker.start(out.name, {"kind": "compare", **run_config(options)})
    scores = _cross_validate(options, data, strategies, fractions, tracker)
    result = CompareResult(
        out_dir=out,
        scores=scores,
        summary=summarise(scores),
        data_checks=checks,
        classes=len(data.classes),
    )
    result.timings["total_s"] = time.perf_counter() - t0
    write_comparison(result, options)
    _log_results(result, tracker)
    return result


def _stopped_study(out: Path, options: CompareOptions) -> bool:
    """Whether ``out`` holds only the default study of a comparison that stopped before
    writing its results (``trials.log``): the same command continues it."""
    if options.storage is not None or options.trials_in_parallel == 1 or not out.is_dir():
        return False
    names = {p.name for p in out.iterdir()}
    return STUDY_FILE in names and all(n.startswith(STUDY_FILE) for n in names)


def _check_fold_sizes(data: LabeledData, options: CompareOptions) -> None:
    """Raises :class:`DataError` when a class has fewer examples than there are folds."""
    smallest = int(np.bincount(data.targets).min())
    if smallest < options.folds:
        worst = data.classes[int(np.bincount(data.targets).argmin())]
        raise DataError(
            f"{options.data}: class {worst!r} has {smallest} examples, fewer than "
            f"--folds {options.folds}; use fewer folds or add data"
        )


def _cross_validate(
    options: CompareOptions,
    data: LabeledData,
    strategies: list[str],
    fractions: list[float],
    tracker: Tracker,
) -> list[FoldScore]:
    """Every strategy trained on every fold of every repeat, at every share of labels:
    one after another here, or as the trials of a study (``--trials-in-parallel``,
    ``--storage``); the scores in the same order either way."""
    points = _points(options, strategies, fractions)
    if options.trials_in_parallel > 1 or options.storage is not None:
        return _run_study(options, data, points)
    scores = []
    with open_bar(len(points), "compare", enabled=options.progress, unit="fit") as bar:
        for i, point in enumerate(points):
            bar.set_postfix_str(f"fold {point['fold'] + 1} {point['strategy']}")
            with inner():  # each fold's plan and epochs: -v only
                scores.append(_run_point(options, data, points, i, tracker))
            bar.update(1)
    return scores


def _points(
    options: CompareOptions, strategies: list[str], fractions: list[float]
) -> list[dict[str, Any]]:
    """The trials: (repeat, fold, share of labels, strategy), in the order they are
    reported."""
    return [
        {"repeat": repeat, "fold": fold, "labels": fraction, "strategy": strategy}
        for repeat in range(options.seeds)
        for fold in range(options.folds)
        for fraction in fractions
        for strategy in strategies
    ]


def _fold_data(
    options: CompareOptions, data: LabeledData, repeat: int, fold: int, fraction: float
) -> tuple[LabeledData, LabeledData]:
    """Fold ``fold`` of repeat ``repeat``'s stratified split (shuffled by seed + repeat),
    its training part cut to ``fraction`` of each class's labels; and its held-out part.
    A function of these alone: the same whichever trial asks, in whatever order."""
    from sklearn.model_selection import StratifiedKFold

    seed = options.seed + repeat
    splitter = StratifiedKFold(n_splits=options.folds, shuffle=True, random_state=seed)
    train_idx, test_idx = list(splitter.split(data.targets, data.targets))[fold]
    test_data = data.subset(test_idx, note=f"fold {fold + 1} held out (repeat {repeat})")
    idx = _subsample(data.targets, train_idx, fraction, seed * 1000 + fold)
    train_data = data.subset(
        idx, note=f"fold {fold + 1} train, {fraction:g} of labels (repeat {repeat})"
    )
    return train_data, test_data


def _run_point(
    options: CompareOptions,
    data: LabeledData,
    points: list[dict[str, Any]],
    i: int,
    tracker: Tracker,
) -> FoldScore:
    """Trial ``i``: its strategy trained on its fold, seeded from seed + repeat (the same
    for every strategy and fold of a repeat, never from the order trials run in)."""
    p = points[i]
    train_data, test_data = _fold_data(options, data, p["repeat"], p["fold"], p["labels"])
    at = _Fold(p["repeat"], p["fold"], p["labels"], options.seed + p["repeat"], i + 1, len(points))
    return _train_fold(options, p["strategy"], at, train_data, test_data, tracker)


def _run_study(
    options: CompareOptions, data: LabeledData, points: list[dict[str, Any]]
) -> list[FoldScore]:
    """The trials on an Optuna study (:mod:`headstart.choose.trials`): each trial's
    score is its user attributes, read back by point."""
    assert options.out is not None
    recipe = json.loads(
        json.dumps({"options": study_config(options), "data": data.fingerprint()}, default=str)
    )
    storage = options.storage
    if storage is None:  # the embedded default: a journal file in --out, which we hold
        journal = Path(options.out).resolve() / STUDY_FILE
        journal.parent.mkdir(parents=True, exist_ok=True)
        if options.overwrite:
            journal.unlink(missing_ok=True)
        storage = f"{JOURNAL}{journal}"
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    name = options.study or f"compare-{digest}"
    study = Study(name, storage, Grid(points), recipe, owned=options.storage is None)
    setup = functools.partial(_trial_runner, options.replace(progress=False), points)
    attrs = run_trials(study, setup, workers=options.trials_in_parallel)
    names = {f.name for f in dataclasses.fields(FoldScore)} - {"curve"}
    return [
        FoldScore(**{k: v for k, v in a.items() if k in names}, curve=tuple(a["curve"]))
        for a in attrs
    ]


def _trial_runner(options: CompareOptions, points: list[dict[str, Any]]) -> RunTrial:
    """In a worker: the data loaded once, and what runs one trial of ``points``."""
    data = load_training_data(_as_strategy(options, points[0]["strategy"]))
    keys = [sorted(p.items()) for p in points]
    untracked = Tracker(mlflow_uri=None, tensorboard=None)

    def run(point: dict[str, Any]) -> dict[str, Any]:
        score = _run_point(options, data, points, keys.index(sorted(point.items())), untracked)
        return {**dataclasses.asdict(score), "value": score.accuracy}

    return run


@dataclass(frozen=True)
class _Fold:
    """Where one training run sits in the cross-validation: for its score, the prefix of
    its tracked metrics and its log line."""

    repeat: int
    fold: int  # 0-based; shown 1-based
    fraction: float  # the share of the fold's training labels
    seed: int
    step: int  # this run's number, from 1, of ``steps``
    steps: int


def _train_fold(
    options: CompareOptions,
    strategy: str,
    at: _Fold,
    train_data: LabeledData,
    test_data: LabeledData,
    tracker: Tracker,
) -> FoldScore:
    """``strategy`` trained on ``train_data`` and scored on ``test_data`` at the last epoch;
    for auto, the strategy recommended for ``train_data`` alone."""
    # the held-out fold validates; its last epoch is scored (CompareOptions.FIT_FIXED)
    fold_options = _as_strategy(options, strategy).replace(seed=at.seed)
    chosen = case = ""
    t_measure = time.perf_counter()
    if is_auto(strategy):
        fold_options, chosen, case = _recommended(fold_options, train_data)
    # auto's time includes its measuring: that is what choosing costs
    measure_s = time.perf_counter() - t_measure
    where = f"{strategy}/" + (f"r{at.repeat}/" if options.seeds > 1 else "")
    where += f"fold{at.fold + 1}/" + (f"labels{at.fraction:g}/" if at.fraction < 1 else "")
    trained = train_on(fold_options, train_data, test_data, on_epoch=tracker.epoch_logger(where))
    m = trained.metrics
    log.info(
        "[%d/%d] repeat %d fold %d labels %g %-10s accuracy %.3f (%.1fs)",
        at.step,
        at.steps,
        at.repeat,
        at.fold + 1,
        at.fraction,
        f"auto->{chosen}" if chosen else strategy,
        m["val_acc"],
        trained.timings["train_s"],
    )
    return FoldScore(
        strategy=strategy,
        repeat=at.repeat,
        fold=at.fold,
        accuracy=float(m["val_acc"]),
        macro_f1=float(m["val_f1"]),
        seconds=trained.timings["train_s"] + measure_s,
        n_train=len(train_data),
        n_test=len(test_data),
        curve=tuple(float(e.val_acc or 0.0) for e in trained.history.epochs),
        fraction=at.fraction,
        labels_per_class=len(train_data) / len(train_data.classes),
        chosen=chosen,
        case=case,
        augment=(trained.augmentation or {}).get("applied", ""),
    )


def _log_results(result: CompareResult, tracker: Tracker) -> None:
    """Each fold's accuracy (all labels) and each strategy's summary, then the files."""
    for i, s in enumerate(result.scores):
        if s.fraction == 1.0:
            tracker.log_metrics({f"{s.strategy}/accuracy": s.accuracy}, step=i)
    for summary in result.summary:
        tracker.log_metrics(
            {
                f"{summary.strategy}/mean_accuracy": summary.mean,
                f"{summary.strategy}/std_accuracy": summary.std,
                f"{summary.strategy}/diff_vs_best": summary.diff_vs_best,
                f"{summary.strategy}/seconds_per_fold": summary.seconds,
            }
        )
    tracker.log_artifacts(result.out_dir)


def _as_strategy(options: CompareOptions, strategy: str) -> FitOptions:
    """The fit options for one of the compared strategies: ``--head-epochs`` applies to
    those that train the backbone (``linear`` trains only the head anyway)."""
    linear = not is_auto(strategy) and not strategy_of(strategy).trains_backbone
    return options.fit_options(strategy=strategy, head_epochs=0 if linear else options.head_epochs)


def _recommended(options: FitOptions, train_data: LabeledData) -> tuple[FitOptions, str, str]:
    """``options`` with the plan that recommend picks for this fold, and its label."""

    rec = recommend_for(options, train_data)
    return replace(options, **rec.options()), rec.label(), rec.case

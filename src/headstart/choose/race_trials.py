"""``--strategy auto``'s race with its fits as trials (``fit --trials-in-parallel K``).

Each round of the race (:mod:`headstart.choose.race`) trains the plans still in on one
fold; those fits are independent, so with K workers they run as the trials of an Optuna
study (:mod:`headstart.choose.trials`, the engine ``compare`` uses), one study per round
in a journal file that lives as long as the race.  A trial is a function of its point
(plan, fold) alone: the worker makes the same folds from the same seed, trains the plan
with the same options and returns its held-out accuracy, loss and seconds, so the race
records the same numbers whichever worker ran which fit, in whatever order.

What changes with workers: round 1 trains every plan (one after another, the race could
stop in mid-round on its budget; K workers start the plans together), and each worker
pays a process start and loads nothing but what it is sent (the training part, pickled).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from typing import Any

from headstart.choose.rank_validate import validation_folds
from headstart.choose.trials import JOURNAL, Grid, RunTrial, Study, run_trials
from headstart.config.fields import Select
from headstart.config.options import FitOptions
from headstart.data.labelled import LabeledData
from headstart.errors import ConfigError
from headstart.train.assemble import train_on

__all__ = ["FoldFit", "fit_on_fold", "fold_options", "fold_parts", "round_on_trials"]

FoldFit = dict[str, Any]  # accuracy, loss, seconds; or failed: why the plan cannot train


def fold_options(options: FitOptions, seed: int) -> FitOptions:
    """A fit's ``options`` as every fold fit of the race runs them: no validation split
    of its own (the fold's held-out part scores it), its last epoch, no early stopping
    or checkpoints, the race's ``seed``."""
    return options.replace(
        val_fraction=0.0, select=Select.LAST, patience=None, seed=seed, checkpoint_every=0
    )


def fit_on_fold(
    options: FitOptions, changes: dict[str, Any], fold_train: LabeledData, fold_held: LabeledData
) -> FoldFit:
    """One plan (``options`` with ``changes``) trained on a fold and scored at its last
    epoch on the held-out part; a plan that cannot train (:class:`ConfigError`) says why."""
    try:
        trained = train_on(options.replace(**changes), fold_train, fold_held)
    except ConfigError as exc:
        return {"failed": str(exc)}
    loss = trained.metrics.get("val_loss")
    return {
        "failed": "",
        "accuracy": float(trained.metrics["val_acc"]),
        "loss": float(loss) if loss is not None else math.inf,
        # the fit's own measure of its time: loading (source, loaders, range test) + training
        "seconds": float(sum(trained.timings.get(k, 0.0) for k in ("load_s", "train_s"))),
    }


def fold_parts(
    train_data: LabeledData, k: int, seed: int, r: int
) -> tuple[LabeledData, LabeledData]:
    """Fold ``r`` (0-based) of ``k`` of the race: its training and held-out parts."""
    train_idx, test_idx = validation_folds(train_data, k, seed)[r]
    return (
        train_data.subset(train_idx, note=f"race fold {r + 1} of {k}, train"),
        train_data.subset(test_idx, note=f"race fold {r + 1} of {k}, held out"),
    )


def round_on_trials(
    options: FitOptions,
    train_data: LabeledData,
    plans: dict[int, dict[str, Any]],
    *,
    k: int,
    seed: int,
    r: int,
    workers: int,
    journal: str,
) -> dict[int, FoldFit]:
    """Round ``r``: each of ``plans`` (index -> changes) trained on fold ``r`` by
    ``workers`` processes; what each fit gave, by plan index."""
    points = [{"plan": i, "fold": r} for i in sorted(plans)]
    recipe = json.loads(
        json.dumps(
            {
                "options": options,
                "plans": plans,
                "k": k,
                "seed": seed,
                "data": train_data.fingerprint(),
            },
            default=str,
        )
    )
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    study = Study(
        f"race-{digest}-fold{r + 1}", f"{JOURNAL}{journal}", Grid(points), recipe, owned=True
    )
    setup = functools.partial(
        _runner, options.replace(progress=False, trials_in_parallel=1), train_data, plans, k, seed
    )
    attrs = run_trials(study, setup, workers=workers)
    return {p["plan"]: a for p, a in zip(points, attrs, strict=True)}


def _runner(
    options: FitOptions,
    train_data: LabeledData,
    plans: dict[int, dict[str, Any]],
    k: int,
    seed: int,
) -> RunTrial:
    """In a worker: what runs one trial (a plan on a fold)."""

    def run(point: dict[str, Any]) -> dict[str, Any]:
        fold_train, fold_held = fold_parts(train_data, k, seed, point["fold"])
        fit = fit_on_fold(options, plans[point["plan"]], fold_train, fold_held)
        return {**fit, "value": fit.get("accuracy", -1.0)}

    return run

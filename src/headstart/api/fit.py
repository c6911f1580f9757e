"""``fit``, ``pretrain`` and ``fit --resume``: train a target model and write its run dir.

While it trains, checkpoints go to a hidden folder beside the run dir
(:mod:`headstart.train.checkpoint`); ``--resume`` continues from there.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from headstart._progress import inner
from headstart.api.launch import launch
from headstart.api.result import FitResult
from headstart.choose.html import write_html_page
from headstart.choose.plots import plot_curves
from headstart.choose.race import RaceBudget, race, should_race
from headstart.choose.recommend import Recommendation, recommend_for
from headstart.choose.report import write_report_md
from headstart.choose.seen import sketch
from headstart.config.options import FitOptions, PretrainOptions
from headstart.config.strategies import is_auto
from headstart.data.checks import data_checks
from headstart.data.labelled import LabeledData
from headstart.errors import ConfigError, DataError
from headstart.plan.lora import save_adapter
from headstart.rundir import input_paths, prepare_out, write_run, writing
from headstart.train.assemble import (
    Trained,
    _default_out,
    _split,
    check_options,
    load_training_data,
    train_on,
)
from headstart.train.checkpoint import Checkpointer, checkpoint_dir, is_resumable, kill_point
from headstart.train.lr_find import plot_lr_curve
from headstart.train.parallel import Parallel, group_size, in_launched_group
from headstart.train.tracking import Tracker, open_tracker

log = logging.getLogger(__name__)


def fit(options: FitOptions, *, kind: str = "fit") -> FitResult:
    """Build the target model, apply the plan, train, and write a complete run dir.

    While it trains, checkpoints go to a hidden folder beside the run dir
    (:mod:`headstart.train.checkpoint`); ``options.resume`` continues a stopped fit from there.
    With ``options.mlflow_uri`` / ``options.tensorboard`` the run is also tracked there
    (by the main process only, when several train).
    """

    if in_launched_group() and int(os.environ.get("RANK", "0")) != 0:
        options = replace(options, mlflow_uri=None, tensorboard=None)
    options, lock = _one_writer(options, kind)
    with lock, open_tracker(options) as tracker:
        return _fit(options, kind=kind, tracker=tracker)


def _one_writer(options: FitOptions, kind: str) -> tuple[FitOptions, AbstractContextManager[Any]]:
    """The lock that makes this process the one writer of the run dir and its checkpoint
    folder (``rundir.writing``), held for the whole fit; taken by the process that writes
    them: not a launcher of several processes, nor the group's other processes."""
    launcher = group_size(options) > 1 and not in_launched_group()
    if int(os.environ.get("RANK", "0")) != 0 or launcher:
        return options, nullcontext()
    if not (options.resume or options.out):
        if in_launched_group():  # refused by _fit: several processes need one --out
            return options, nullcontext()
        options = replace(options, out=_default_out(kind))  # named once, here
    out = options.resume or options.out
    assert out is not None
    return options, writing(
        out, inputs=input_paths(options), flag="--resume" if options.resume else "--out"
    )


def _fit(options: FitOptions, *, kind: str, tracker: Tracker) -> FitResult:
    t_start = time.perf_counter()
    if group_size(options) > 1 and not in_launched_group():
        return _launch_group(options, kind)
    parallel = Parallel.from_environment(options) if in_launched_group() else None
    main = parallel is None or parallel.is_main
    if parallel is not None and not (options.out or options.resume):
        raise ConfigError("several processes write one run dir: give it with --out")
    start = _open_out(options, kind, main)
    options, out, kind, saved = start.options, start.out, start.kind, start.saved
    if parallel is not None and options.batch_size is not None:  # auto: sized to divide
        parallel.check_batch(options.batch_size)
    check_options(options)
    RaceBudget.parse(options.budget)  # a typo in --budget fails before any slow work
    data = load_training_data(options)
    train_data, val_data = _split(options, data)
    checks = data_checks(data, train_data, val_data)  # warns about leakage before training
    options, checkpointer, recommendation = _resolve(start, train_data, val_data, main)
    checkpointer.every = options.checkpoint_every
    checkpointer.writer = main
    if parallel is not None:  # nobody reads the checkpoint folder before it is ready
        parallel.barrier()
    tracker.start(
        out.name,
        {
            "kind": kind,
            **asdict(options),
            "recommended_case": recommendation["case"] if recommendation else None,
        },
    )
    try:
        trained = train_on(
            options,
            train_data,
            val_data,
            checkpointer=checkpointer,
            parallel=parallel,
            on_epoch=tracker.epoch_logger(),
        )
    except BaseException:
        # Failed before its first checkpoint (a bad source, Ctrl-C): nothing to resume, so
        # nothing may stand in the way of the next fit.  A SIGKILL never gets here.
        if saved is None and not checkpointer.steps():
            checkpointer.remove()
        raise
    if not main:  # only the main process writes the run dir: wait until it has
        assert parallel is not None
        parallel.barrier()
        return _result(out, trained, data.classes, {})
    timings = dict(trained.timings)
    timings["load_s"] = (time.perf_counter() - t_start) - timings["train_s"]
    data_meta = {
        "train": train_data.describe(),
        "val": val_data.describe() if val_data is not None else None,
        "spec": options.data,
        "checks": checks,
        "seen": sketch(train_data, val_data),  # rank tells a candidate that saw its data
    }
    meta = _meta(options, kind, trained, data.classes, data_meta, recommendation, saved, timings)
    run_dir = _write(out, options, trained, meta, timings, t_start, resumed=saved is not None)
    checkpointer.remove()  # the run dir is complete: nothing left to resume
    if parallel is not None:  # the other machines read the run dir back once it is there
        parallel.barrier()
    timings["total_s"] = time.perf_counter() - t_start
    rows = trained.history.rows()
    tracker.log_metrics({f"final_{k}": v for k, v in trained.metrics.items()}, step=len(rows))
    tracker.log_artifacts(run_dir)
    log.debug("run dir: %s", run_dir)  # the command says it, with the result
    return _result(run_dir, trained, data.classes, timings)


def _launch_group(options: FitOptions, kind: str) -> FitResult:
    """``--processes N`` (``--nodes M``): spawn this machine's share of the group on one
    run dir and read its result back.  The main machine checks ``--out``; every machine
    must name the same one."""
    if options.resume:
        options = replace(options, out=options.resume)
    elif options.nodes > 1 and not options.out:
        raise ConfigError(
            f"--nodes {options.nodes}: the machines write one run dir: give the same --out "
            "on each, a folder they all see"
        )
    elif options.node_rank == 0:  # every process must write to (and check) the same folder
        out = prepare_out(
            options.out or _default_out(kind),
            overwrite=options.overwrite,
            inputs=input_paths(options),
        )
        options = replace(options, out=str(out))
    return launch(fit, options, kind=kind)


@dataclass
class _Start:
    """Where a fit writes and what it starts from: a new run dir, or a stopped fit's
    checkpoint (``saved``, with ``checkpointer`` open on it) and the options it had."""

    options: FitOptions
    out: Path
    kind: str
    saved: dict[str, Any] | None = None
    checkpointer: Checkpointer | None = None


def _open_out(options: FitOptions, kind: str, main: bool) -> _Start:
    """The run dir to write: ``--resume``'s (its options and kind come back), or a new
    one, refused when it holds a stopped fit's checkpoint (unless ``--overwrite``)."""
    if options.resume:
        out = Path(options.resume)
        checkpointer, saved = Checkpointer.open(out)
        options = resumed_options(options, saved)
        kind = str(saved.get("kind", kind))  # fit --resume of a pretrain stays a pretrain
        return _Start(options, out, kind, saved, checkpointer)
    out = prepare_out(
        options.out or _default_out(kind), overwrite=options.overwrite, inputs=input_paths(options)
    )
    if is_resumable(out) and not options.overwrite and main:
        raise ConfigError(
            f"--out {out}: a stopped fit's checkpoint is at {checkpoint_dir(out)}; "
            f"continue it with --resume {out}, or start over with --overwrite"
        )
    return _Start(options, out, kind)


def _resolve(
    start: _Start, train_data: LabeledData, val_data: LabeledData | None, main: bool
) -> tuple[FitOptions, Checkpointer, dict[str, Any] | None]:
    """The options to train with (``--strategy auto`` resolved, or as the checkpoint
    resolved it), the checkpointer and the recommendation.  A resumed fit whose data
    changed is a :class:`DataError`."""
    options, out = start.options, start.out
    fingerprints = {
        "train": train_data.fingerprint(),
        "val": val_data.fingerprint() if val_data is not None else None,
    }
    if start.saved is not None:
        assert start.checkpointer is not None
        if start.saved["fingerprints"] != fingerprints:
            raise DataError(
                f"--resume {out}: the data ({options.data}) changed since the checkpoint was "
                "written; resume with the same data, or start over with --overwrite"
            )
        options = replace(options, **start.saved["resolved"])
        return options, start.checkpointer, start.saved["recommendation"]
    requested = options
    recommendation: dict[str, Any] | None = None
    if is_auto(options.strategy):
        # Measured on the training part only: the validation split stays unseen.
        rec = recommend_for(options, train_data)
        recommendation = rec.to_dict()
        options = replace(options, **rec.options())
        options, recommendation["race"] = _race(options, train_data, rec, main)
    checkpointer = Checkpointer.create(
        out,
        {
            "kind": start.kind,
            "options": _saved_options(requested, out),
            "resolved": {
                "strategy": options.strategy,
                "backbone_lr_mult": options.backbone_lr_mult,
                "head_epochs": options.head_epochs,
            },
            "recommendation": recommendation,
            "fingerprints": fingerprints,
        },
        writer=main,
    )
    return options, checkpointer, recommendation


def _race(
    options: FitOptions, train_data: LabeledData, rec: Recommendation, main: bool
) -> tuple[FitOptions, dict[str, Any]]:
    """On small data, race the plans the measurements leave open (``choose.race``) and
    keep the winner; the record says what ran, or why nothing did."""
    plans = rec.candidates()
    counts = np.bincount(train_data.targets, minlength=len(train_data.classes))
    go, why = should_race(
        len(train_data), len(train_data.classes), n_candidates=len(plans),
        min_per_class=int(counts.min()),
    )  # fmt: skip
    if go and group_size(options) > 1:
        go, why = False, "several processes: the plan is decided from the measurements alone"
    if not go:
        log.info("auto: no race (%s)", why)
        return options, {"raced": False, "why": why}
    with inner():  # the race's runs: -v only; its result is said below
        result = race(options, train_data, plans, budget=options.budget, seed=options.seed)
    log.info("%s", result.describe())
    return replace(options, **result.options()), {**result.to_dict(), "why": why}


def _meta(
    options: FitOptions,
    kind: str,
    trained: Trained,
    classes: Sequence[str],
    data: dict[str, Any],
    recommendation: dict[str, Any] | None,
    saved: dict[str, Any] | None,
    timings: dict[str, float],
) -> dict[str, Any]:
    """``headstart.json``: what was trained, on what, how, and how it went."""
    source = trained.source
    return {
        "kind": kind,
        "source": source.describe(),
        "classes": list(classes),
        "preprocessing": source.preprocessing.to_dict(),
        "plan": trained.plan.to_dict(),
        "dropout": options.dropout,
        "data": data,
        "metrics": trained.metrics,
        "recommendation": recommendation,
        "resumed": saved is not None,
        **trained.inputs.run_meta(text_col=options.text_col, label_col=options.label_col),
        "config": {k: v for k, v in asdict(options).items() if k != "progress"},
        "timings": timings,  # the same dict: total_s is filled in as the run dir is written
        "feature_cache": trained.feature_cache,
        "augmentation": trained.augmentation,
        "accel": trained.speed,
        # what was sized from the data (train.budget, train.auto) and why
        "budget": trained.budget,
        "lr_find": _lr_find_record(trained),
        "head_solver": trained.head_solver,
    }


def _lr_find_record(trained: Trained) -> dict[str, Any] | None:
    curve = trained.lr_find
    if curve is None:
        if trained.lr_rule is None:
            return None
        return {
            "lr": trained.plan.head_lr,
            "rule": trained.lr_rule,
            "plot": None,
            "steps": 0,
            "seconds": 0.0,
        }
    return {"lr": curve.suggestion, "rule": curve.rule, "plot": "lr_find.png", **curve.to_dict()}


def _write(
    out: Path,
    options: FitOptions,
    trained: Trained,
    meta: dict[str, Any],
    timings: dict[str, float],
    t_start: float,
    *,
    resumed: bool,
) -> Path:
    """Write the run dir: the model, ``meta``, the metrics, the source's own files, the
    adapter, the curves and ``report.md``."""
    source, plan = trained.source, trained.plan
    rows = trained.history.rows()

    def extras(folder: Path) -> None:
        if source.save_files is not None:  # config + tokenizer: the run rebuilds alone
            source.save_files(folder)
        if trained.adapter is not None:
            save_adapter(folder, trained.adapter)
        title = f"{source.spec} · {plan.strategy} · {options.data}"
        plot_curves(rows, folder / "curves.png", title=title, classes=len(meta["classes"]))
        if trained.lr_find is not None:
            plot_lr_curve(trained.lr_find, folder / "lr_find.png", title=title)
        timings["total_s"] = time.perf_counter() - t_start
        write_report_md(meta, rows, folder / "report.md")
        write_html_page(folder / "report.md", folder / "report.html")

    kill_point("run:write")
    return write_run(
        out,
        model=trained.model,
        meta=meta,
        metrics_rows=rows,
        extras=extras,
        overwrite=options.overwrite or resumed,
    )


def _result(
    run_dir: Path, trained: Trained, classes: Sequence[str], timings: dict[str, float]
) -> FitResult:
    return FitResult(
        run_dir=run_dir,
        model=trained.model,
        classes=list(classes),
        plan=trained.plan,
        history=trained.history,
        source=trained.source.describe(),
        metrics=trained.metrics,
        timings=timings or dict(trained.timings),
    )


# Options that do not change what is computed: a resumed run may set them anew.
_RUNTIME_OPTIONS = frozenset(
    {
        "resume",
        "progress",
        "device",
        "workers",
        "processes",
        "nodes",
        "node_rank",
        "main_address",
        "cache_dir",
        "checkpoint_every",
        "trials_in_parallel",
        "deterministic",
    }
)


# Where this command's processes run in the group: never taken from the checkpoint (a
# resumed group may meet elsewhere; a machine resumes with its own --node-rank).
_PLACE_OPTIONS = ("nodes", "node_rank", "main_address")


def _saved_options(options: FitOptions, out: Path) -> dict[str, Any]:
    d = {k: v for k, v in asdict(options).items() if k not in ("resume", "progress")}
    d["out"] = str(out)
    return d


def resumed_options(given: FitOptions, saved: dict[str, Any]) -> FitOptions:
    """The options a checkpoint was written with, plus the runtime ones given now.

    A training option given now (one that differs from its default) that differs from the
    saved one is a :class:`ConfigError`: a resumed run cannot change how it trains.
    """
    if given.overwrite:
        raise ConfigError("--resume and --overwrite: resume continues a run; drop one of them")
    stored = dict(saved["options"])
    if given.out is not None and Path(given.out) != Path(given.resume or ""):
        raise ConfigError(
            f"--out {given.out} with --resume {given.resume}: a resumed run is written where "
            "it was going to be; drop --out"
        )
    conflicts = []
    for f in fields(given):
        if f.name in _RUNTIME_OPTIONS or f.name in ("out", "overwrite") or f.name not in stored:
            continue
        value = getattr(given, f.name)
        if value != f.default and value != stored[f.name]:
            flag = "DATA" if f.name == "data" else "--" + f.name.replace("_", "-")
            kept = "auto" if stored[f.name] is None and f.metadata.get("auto") else stored[f.name]
            conflicts.append(f"{flag} {value} (the checkpoint has {kept})")
    if conflicts:
        raise ConfigError(
            f"--resume {given.resume}: {'; '.join(conflicts)}; a resumed run keeps the "
            "options it started with: drop these flags"
        )
    stored.pop("out", None)
    for name in _PLACE_OPTIONS:  # where this command runs, as given now
        stored.pop(name, None)
    # A runtime option given now wins; one left at its default keeps the saved value.
    defaults = {f.name: f.default for f in fields(given)}
    runtime = {
        k: getattr(given, k)
        for k in _RUNTIME_OPTIONS
        if k not in stored or getattr(given, k) != defaults[k]
    }
    return replace(given, **{**stored, **runtime, "out": given.resume})


def pretrain(options: PretrainOptions) -> FitResult:
    """Train ``options.source`` from scratch on a source data set; returns the run."""
    return fit(options.fit_options(), kind="pretrain")

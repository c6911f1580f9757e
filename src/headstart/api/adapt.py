"""``headstart adapt``: train on labelled source-domain data for an unlabelled target domain.

Three methods, trained by fit's loop (:func:`headstart.train.loop.train`) with their own
objective (:class:`headstart.train.domain.DomainObjective`: the labelled batches drive the
epochs; unlabelled target batches are drawn alongside, cycling):

- ``dann`` -- Domain-Adversarial Neural Networks (Y. Ganin, V. Lempitsky, "Unsupervised
  Domain Adaptation by Backpropagation", ICML 2015; Ganin et al., "Domain-Adversarial
  Training of Neural Networks", JMLR 2016).  A domain classifier on the backbone's
  features learns to tell source from target; between it and the backbone a *gradient
  reversal layer* is the identity forward and multiplies the gradient by ``-lambda``
  backward, so the backbone learns features the domain classifier cannot separate while
  the label head learns the task.  ``lambda`` follows the paper's schedule
  ``2 / (1 + exp(-gamma p)) - 1`` (gamma = 10) with ``p`` the training progress from 0
  to 1, which keeps the noisy early domain signal from swamping the features.
- ``coral`` -- Deep CORAL (B. Sun, K. Saenko, "Deep CORAL: Correlation Alignment for
  Deep Domain Adaptation", ECCV 2016 workshops): the non-adversarial baseline; the loss
  adds ``|C_S - C_T|_F^2 / (4 d^2)``, the distance between the source and target feature
  covariances.
- ``source-only`` -- the same network, plan and schedule trained on the labelled data
  alone: what adaptation has to beat.

For all three the learning rate follows the papers' annealing ``mu_p = mu_0 / (1 + alpha
p)^beta`` (alpha = 10, beta = 0.75) on the plan's AdamW groups (head at ``--lr``,
backbone at ``--lr x --backbone-lr-mult``; the domain classifier at ``--lr``).  For
``dann`` and ``coral`` the source and target batches go through the backbone together,
so BatchNorm normalises both with shared statistics; ``source-only`` never sees a
target image.  No target label is used for training or for choosing the epoch (the last
epoch is kept); with ``--eval`` the target accuracy is measured after every epoch for
the record, and the finished run is evaluated on it (``RUN/eval``).  The run dir is the
same as ``fit``'s, so ``predict`` and ``evaluate`` work on it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from headstart.api.predict import evaluate
from headstart.choose.html import write_html_page
from headstart.choose.plots import plot_curves
from headstart.choose.report import write_report_md
from headstart.config.options import AdaptOptions
from headstart.config.strategies import resolve_augment, strategy_of
from headstart.data.images import load_data
from headstart.data.labelled import UNLABELLED, LabeledData, list_inputs
from headstart.errors import ConfigError, DataError
from headstart.plan.make import Plan, format_plan, make_plan
from headstart.rundir import input_paths, prepare_out, write_run, writing
from headstart.runtime import loader_workers, resolve_device, seed_everything
from headstart.sources.base import Source
from headstart.sources.inputs import Inputs
from headstart.sources.target import TargetModel
from headstart.train.assemble import (
    _build_source,
    _default_out,
    _split,
    check_options,
    load_training_data,
)
from headstart.train.domain import (
    ANNEAL_ALPHA,
    ANNEAL_BETA,
    DANN_GAMMA,
    METHODS,
    DomainClassifier,
    DomainObjective,
)
from headstart.train.loop import (
    EVAL_BATCH,
    train,
)

__all__ = ["AdaptResult", "adapt", "load_unlabelled"]

log = logging.getLogger(__name__)


def load_unlabelled(spec: str, *, allow_hflip: bool) -> LabeledData:
    """The target domain's images, labels (if any) ignored.

    A folder is searched for images recursively (class folders or not); a CSV or a
    ``builtin:`` set is loaded as data and its labels dropped.
    """
    path = Path(spec).expanduser()
    if not spec.startswith("builtin:") and path.is_dir():
        try:
            items = list_inputs([path])
        except DataError as exc:
            raise DataError(f"--target {spec}: {exc}") from None
        data = LabeledData(
            spec=spec,
            classes=[],
            items=list(items),
            targets=np.full(len(items), UNLABELLED, dtype=np.int64),
        )
    else:
        try:
            labelled = load_data(spec)
        except DataError as exc:
            raise DataError(f"--target: {exc}") from None
        data = LabeledData(
            spec=spec,
            classes=[],
            items=labelled.items,
            targets=np.full(len(labelled), UNLABELLED, dtype=np.int64),
        )
    if len(data) < 2:
        raise DataError(f"--target {spec}: {len(data)} image(s); adaptation needs at least 2")
    data.allow_hflip = allow_hflip
    return data


# --------------------------------------------------------------------------- training


@dataclass
class AdaptResult:
    run_dir: Path
    method: str
    metrics: dict[str, Any]
    timings: dict[str, float]
    rows: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "method": self.method,
            "metrics": self.metrics,
            "timings": self.timings,
        }


def _check(options: AdaptOptions) -> None:
    if options.method not in METHODS:
        raise ConfigError(f"--method {options.method!r}; valid: {', '.join(METHODS)}")
    if not options.target:
        raise ConfigError("--target: give the unlabelled target-domain images (a folder)")


@dataclass
class _Data:
    """adapt's data: the labelled split, the unlabelled target, the optional --eval."""

    all: LabeledData
    train: LabeledData
    val: LabeledData | None
    target: LabeledData
    eval: LabeledData | None


def _load(options: AdaptOptions) -> _Data:
    data = load_training_data(options.fit_options())
    train_data, val_data = _split(options.fit_options(), data)
    target = load_unlabelled(options.target, allow_hflip=data.allow_hflip)
    eval_data = (
        load_data(
            options.eval, classes=data.classes, skip_bad=options.skip_bad, progress=options.progress
        )
        if options.eval
        else None
    )
    if eval_data is not None and not len(eval_data):
        raise DataError(f"--eval {options.eval}: no items")
    return _Data(data, train_data, val_data, target, eval_data)


def _plan(options: AdaptOptions, source: Source) -> Plan:
    plan = make_plan(
        options.strategy,
        source.stage_names,
        lr=options.lr,
        backbone_lr_mult=options.backbone_lr_mult,
        weight_decay=options.weight_decay,
    )
    if options.method != "source-only" and not plan.trainable_stages:
        raise ConfigError(
            f"--method {options.method} adapts the backbone's features, but --strategy "
            f"{options.strategy} trains none of it; use full or partial:K"
        )
    return plan


def _loaders(
    options: AdaptOptions, data: _Data, inputs: Inputs, generator: torch.Generator, workers: int
) -> tuple[DataLoader[Any], DataLoader[Any], DataLoader[Any] | None, DataLoader[Any] | None]:
    """The labelled, target, validation and --eval loaders."""
    seed = options.seed

    def training(items: LabeledData, generator: torch.Generator, seed: int) -> DataLoader[Any]:
        return inputs.train_loader(
            items, augment=options.augment, batch_size=options.batch_size,
            workers=workers, generator=generator, seed=seed,
        )  # fmt: skip

    def evaluation(items: LabeledData | None) -> DataLoader[Any] | None:
        if items is None or not len(items):
            return None
        batch_size = max(options.batch_size, EVAL_BATCH)
        return inputs.eval_loader(items, batch_size=batch_size, workers=workers)[0]

    return (
        training(data.train, generator, seed),
        training(data.target, torch.Generator().manual_seed(seed + 1), seed + 1),
        evaluation(data.val),
        evaluation(data.eval),
    )


def adapt(options: AdaptOptions) -> AdaptResult:
    """Train ``options.source`` on the labelled data for the unlabelled ``options.target``
    by ``options.method``; write a run dir (as ``fit`` does) and, with ``options.eval``,
    report the target accuracy."""
    out = options.out or _default_out("adapt")
    options = options.replace(out=out)
    with writing(out, inputs=input_paths(options)):
        return _adapt(options)


def _adapt(options: AdaptOptions) -> AdaptResult:
    t_start = time.perf_counter()
    _check(options)
    # adapt keeps the last epoch (no target label may choose one: AdaptOptions.FIT_FIXED)
    # and shows no bar
    config = replace(options.fit_options().train_config(), progress=False)
    # --augment auto: light for the strategies that train the backbone (as fit)
    options = options.replace(augment=resolve_augment(options.augment, options.strategy))
    out = prepare_out(
        options.out or _default_out("adapt"),
        overwrite=options.overwrite,
        inputs=input_paths(options),
    )
    check_options(options.fit_options())
    data = _load(options)
    generator = seed_everything(options.seed)
    source = _build_source(
        options.fit_options(), scratch=strategy_of(options.strategy).reinitialise
    )
    plan = _plan(options, source)
    log.info("source: %s (%s)", source.spec, source.weights.description)
    log.info("%s", format_plan(plan))
    torch.manual_seed(options.seed)
    model = TargetModel(source.backbone, len(data.all.classes), dropout=options.dropout)
    domain = DomainClassifier(source.feature_dim, options.domain_hidden)
    device = resolve_device(options.device)
    domain.to(device)
    source_loader, target_loader, val_loader, eval_loader = _loaders(
        options,
        data,
        source.inputs,
        generator,
        loader_workers(options.workers, device, kind=source.inputs.kind),
    )
    objective = DomainObjective(options, model, domain, plan, target_loader, eval_loader, device)
    t_loaded = time.perf_counter()
    train(model, plan, source_loader, val_loader, config, device=device, objective=objective)
    timings = {"load_s": t_loaded - t_start, "train_s": time.perf_counter() - t_loaded}
    model.cpu()
    model.eval()
    rows = objective.rows
    meta = _meta(options, source, plan, data, rows, timings)

    def extras(folder: Path) -> None:
        title = f"{source.spec} · adapt {options.method} · {options.data} -> {options.target}"
        plot_curves(rows, folder / "curves.png", title=title, classes=len(meta["classes"]))
        timings["total_s"] = time.perf_counter() - t_start
        write_report_md(meta, rows, folder / "report.md")
        write_html_page(folder / "report.md", folder / "report.html")

    run_dir = write_run(
        out, model=model, meta=meta, metrics_rows=rows, extras=extras, overwrite=options.overwrite
    )
    metrics = meta["metrics"]
    if options.eval:
        result = evaluate(run_dir, options.eval, device=options.device)
        metrics["target_acc"] = result.accuracy
        metrics["target_f1"] = result.macro_f1
    timings["total_s"] = time.perf_counter() - t_start
    log.debug("run dir: %s", run_dir)  # the command says it, with the result
    return AdaptResult(
        run_dir=run_dir, method=options.method, metrics=metrics, timings=timings, rows=rows
    )


def _meta(
    options: AdaptOptions,
    source: Source,
    plan: Plan,
    data: _Data,
    rows: list[dict[str, Any]],
    timings: dict[str, float],
) -> dict[str, Any]:
    """``headstart.json`` of an adapt run; its metrics are the last epoch's."""
    last = rows[-1]
    metrics = {
        "best_epoch": len(rows),
        "epochs_run": len(rows),
        "stopped_early": False,
        **{k: last[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc", "val_f1")},
        "target_acc": last["target_acc"],
        "domain_acc": last["domain_acc"],
    }
    return {
        "kind": "adapt",
        "source": source.describe(),
        "classes": list(data.all.classes),
        "preprocessing": source.preprocessing.to_dict(),
        "plan": plan.to_dict(),
        "dropout": options.dropout,
        "data": {
            "train": data.train.describe(),
            "val": data.val.describe() if data.val is not None else None,
            "spec": options.data,
        },
        "adapt": {
            "method": options.method,
            "target": {"spec": options.target, "n_items": len(data.target)},
            "eval": options.eval,
            "lambda_schedule": f"2/(1+exp(-{DANN_GAMMA:g} p))-1"
            if options.method == "dann"
            else None,
            "lr_annealing": f"lr0/(1+{ANNEAL_ALPHA:g} p)^{ANNEAL_BETA:g}",
        },
        "metrics": metrics,
        # a fit's config (what the run dir's readers expect) with adapt's own fields
        "config": {
            k: v
            for k, v in {**asdict(options.fit_options()), **asdict(options)}.items()
            if k != "progress"
        },
        "timings": timings,
    }

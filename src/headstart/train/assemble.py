"""The one place that assembles a training run: data read and split, the source built, the
plan made, the loaders built (images, texts or cached features) and the loop run.
``fit``, ``compare``, ``rank --validate``, ``adapt`` and builtin default weights all
train through :func:`train_on`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from headstart._io import atomic_write_json
from headstart._progress import bars_on, inner
from headstart.config.fields import Select
from headstart.config.options import FitOptions, PretrainOptions
from headstart.config.strategies import (
    check_head_epochs,
    is_auto,
    parse_strategy,
    resolve_augment,
    strategy_of,
)
from headstart.config.train import TrainConfig
from headstart.data.labelled import LabeledData, stratified_split
from headstart.data.sampling import set_deterministic
from headstart.data.texts import load_labelled
from headstart.errors import ConfigError, DataError
from headstart.plan.lora import lora_settings, merge_adapters
from headstart.plan.make import Plan, format_plan, make_plan
from headstart.rundir import save_model
from headstart.runtime import resolve_device, seed_everything
from headstart.sources import BuildOptions, Source, build_source, parse_source_spec
from headstart.sources.inputs import Inputs
from headstart.sources.target import TargetModel
from headstart.train import accel, cached_head
from headstart.train.auto import (
    LR_RULE,
    LR_RULES,
    RANDOM_WEIGHTS_LR,
    RANDOM_WEIGHTS_RULE,
    find_lr,
    random_weights,
    solve_frozen_head,
    solved_start,
    solver_record,
    solves_head,
    starts_solved,
)
from headstart.train.budget import Budget, holdout, size_budget
from headstart.train.checkpoint import Checkpointer
from headstart.train.head_solver import HeadSolution
from headstart.train.loaders import Loaders, build_loaders
from headstart.train.loop import EpochMetrics, History, train
from headstart.train.lr_find import FALLBACK_LR, LrCurve
from headstart.train.parallel import Parallel

log = logging.getLogger(__name__)


def _default_out(kind: str) -> str:
    return str(Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}")


# Fewer optimizer steps than this rarely train a new head to convergence: say so.
MIN_STEPS = 50


def _load_labelled(
    options: FitOptions, spec: str, *, classes: Sequence[str] | None = None
) -> LabeledData:
    """``spec`` (images or texts) read as the options say: columns, pre-scan, progress."""
    return load_labelled(
        spec,
        classes=classes,
        text_col=options.text_col,
        label_col=options.label_col,
        skip_bad=options.skip_bad,
        progress=options.progress and bars_on(),  # the pre-scan's bar: on a terminal only
    )


def _split(options: FitOptions, data: LabeledData) -> tuple[LabeledData, LabeledData | None]:
    if options.val:
        return data, _load_labelled(options, options.val, classes=data.classes)
    fraction, why = holdout(
        len(data),
        val_fraction=options.val_fraction,
        needs_validation=options.patience is not None or options.select == Select.BEST,
    )
    if options.val_fraction is None:  # what auto decided is said; a value given is not
        log.info("%s", why)
    if fraction == 0:
        return data, None
    train_idx, val_idx = stratified_split(
        data.targets, val_fraction=fraction, seed=options.seed, classes=data.classes
    )
    return (
        data.subset(train_idx, note=f"train split ({1 - fraction:.0%}, seed {options.seed})"),
        data.subset(val_idx, note=f"validation split ({fraction:.0%}, seed {options.seed})"),
    )


def build_options(options: Any) -> BuildOptions:
    """A command's options as the adapters take them, able to make builtin default
    weights (which are pre-trained by headstart itself) when they are missing."""
    return replace(BuildOptions.of(options), make_weights=make_default_weights)


def make_default_weights(spec: str, recipe: dict[str, Any], dest: Path) -> None:
    """Pre-train ``spec`` from scratch as ``recipe`` (:class:`PretrainOptions` fields)
    says and put its weights at ``dest``, its classes in ``dest``'s ``.json`` beside it.

    The same training as ``headstart pretrain`` with those options, without a run dir."""
    # The adapter has said what is being built; this run is not the user's: its plan and
    # epochs are an inner run's (-v), its bar is named for what it builds.
    options = PretrainOptions(source=spec, **recipe).fit_options()
    with inner(f"{spec} default weights"):
        data = load_training_data(options)
        train_data, val_data = _split(options, data)
        trained = train_on(options, train_data, val_data)
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_model(dest, trained.model, arch=trained.source.arch, arch_options={})
    atomic_write_json(dest.with_suffix(".json"), {"source": spec, "classes": list(data.classes)})


def _build_source(options: FitOptions, *, scratch: bool) -> Source:
    build = build_options(options)
    if scratch:
        # Same architecture, random initialisation: build the architecture itself.
        probe = (
            build_source(options.source, weights=options.weights, options=build)
            if (options.source.startswith("file:"))
            else None
        )
        arch = probe.arch if probe else options.source
        arch_opts = probe.arch_options if probe else {}
        build = BuildOptions(
            image_size=options.image_size or arch_opts.get("image_size"),
            cache_dir=options.cache_dir,
        )
        source = build_source(arch, weights="none", options=build)
        if probe is not None:
            source.preprocessing = probe.preprocessing
        return source
    return build_source(options.source, weights=options.weights, options=build)


@dataclass
class Trained:
    """A trained target model and what made it; nothing written to disk yet."""

    model: TargetModel
    source: Source
    plan: Plan
    history: History
    metrics: dict[str, Any]
    timings: dict[str, float]
    inputs: Inputs  # what the model took, as it took them (texts: the truncation length)
    feature_cache: dict[str, Any] | None = None  # headtrain: whether the cache was used / hit
    speed: dict[str, Any] | None = None  # precision, channels_last, compile, batch size used
    adapter: Any = None  # lora: the trained adapter (merged into the model already)
    max_length: int | None = None  # texts: the truncation length used
    augmentation: dict[str, Any] | None = None  # what --augment asked for and what was applied
    budget: dict[str, Any] | None = None  # batch, epochs, steps, selection and why (the loop)
    lr_find: LrCurve | None = None  # --lr auto: the range test's curve and pick
    lr_rule: str | None = None  # --lr auto without a range test (random weights): why
    head_solver: dict[str, Any] | None = None  # a solved head: C, its CV accuracies


def check_options(options: FitOptions) -> None:
    """Fail on a typo in the strategy, source or device before any slow work (and
    before ``--strategy auto``'s race, which would call it a plan that cannot train)."""
    if not options.data:
        raise ConfigError("no training data given (DATA)")
    if not is_auto(options.strategy):
        name, _ = parse_strategy(options.strategy)
        check_head_epochs(name, options.head_epochs, options.epochs)
    parse_source_spec(options.source)
    resolve_device(options.device)


def load_training_data(options: FitOptions) -> LabeledData:
    data = _load_labelled(options, options.data)
    if len(data.classes) < 2:
        raise DataError(
            f"{options.data}: needs at least 2 classes to train (found "
            f"{len(data.classes)}: {', '.join(data.classes)})"
        )
    return data


def train_on(
    options: FitOptions,
    train_data: LabeledData,
    val_data: LabeledData | None,
    *,
    checkpointer: Checkpointer | None = None,
    parallel: Parallel | None = None,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
) -> Trained:
    """Build the source and target model, apply the plan and train on the given split.

    The building block of :func:`fit` (which also writes a run dir and checkpoints) and
    of cross-validation, which trains on folds it made itself.  ``on_epoch`` gets each
    epoch's metrics as they are measured (see :func:`headstart.train.loop.train`).
    """
    # on a CUDA out-of-memory error: all again from scratch at half the batch size
    return accel.halve_on_oom(
        options,
        lambda o: _train_on(
            o, train_data, val_data, checkpointer=checkpointer, parallel=parallel, on_epoch=on_epoch
        ),
    )


def _train_on(
    options: FitOptions,
    train_data: LabeledData,
    val_data: LabeledData | None,
    *,
    checkpointer: Checkpointer | None,
    parallel: Parallel | None,
    on_epoch: Callable[[EpochMetrics], None] | None,
) -> Trained:
    run = prepare(options, train_data, val_data, parallel=parallel)
    options, plan, model, loaders = run.options, run.plan, run.model, run.loaders
    t_loaded = time.perf_counter()
    head_solution = None
    with cached_head.threads_for(loaders.model) if loaders.cached else contextlib.nullcontext():
        if run.solved:
            history, head_solution = solve_frozen_head(
                model, loaders, run.source, (train_data, val_data),
                max_length=run.inputs.length, device=run.device,
            )  # fmt: skip
            if on_epoch is not None:  # the solved head's one measurement, as an epoch's
                on_epoch(history.epochs[0])
        else:
            history = train(
                loaders.model,  # type: ignore[arg-type]
                plan,
                loaders.train,
                loaders.val,
                run.config,
                device=run.device,
                checkpointer=checkpointer,
                parallel=parallel,
                on_epoch=on_epoch,
            )
    t_trained = time.perf_counter()
    model.cpu()
    adapter = None
    if plan.lora is not None:
        adapter = merge_adapters(model.backbone)  # prediction runs on the merged weights
    speed = None
    if not loaders.cached:
        speed = {
            **run.speedups.to_dict(),
            "batch_size": options.batch_size,
            "workers": loaders.workers,
        }
    return Trained(
        model,
        run.source,
        plan,
        history,
        _metrics(history),
        {"load_s": t_loaded - run.t_start, "train_s": t_trained - t_loaded},
        run.inputs,
        feature_cache=loaders.feature_cache,
        speed=speed,
        adapter=adapter,
        max_length=run.inputs.length,
        augmentation=_augmentation(
            run.requested_augment, options.augment, loaders.feature_cache, run.inputs
        ),
        budget=None if run.solved else run.budget.to_dict(),
        lr_find=run.lr_curve,
        lr_rule=run.lr_rule,
        head_solver=solver_record(head_solution or run.start, start=run.start is not None),
    )


@dataclass
class Prepared:
    """A run built and ready to train: the options with the budget and the learning rate
    resolved, the source, the plan, the target model, the loaders (over cached features
    where the plan allows) and what was decided on the way."""

    options: FitOptions
    config: TrainConfig
    budget: Budget
    source: Source
    inputs: Inputs
    plan: Plan
    model: TargetModel
    loaders: Loaders
    device: torch.device
    speedups: accel.Accel
    solved: bool  # the head is solved on cached features, not trained by the loop
    start: HeadSolution | None  # fine-tuning starts from this solved head (LP-FT)
    lr_curve: LrCurve | None  # --lr auto (or sweep): the range test
    requested_augment: str
    t_start: float
    lr_rule: str | None = None  # --lr auto with no range test (random weights): the rule


def prepare(
    options: FitOptions,
    train_data: LabeledData,
    val_data: LabeledData | None,
    *,
    parallel: Parallel | None,
    sweep: bool = False,
) -> Prepared:
    """Everything :func:`train_on` trains with, built and sized from the data: the budget
    (:mod:`headstart.train.budget`), the source and plan, the model and loaders, and
    with ``--lr auto`` the rate of the range test.  ``sweep``: run the range test even
    when no rate is needed (``headstart lr-find``)."""
    t_start = time.perf_counter()
    given_epochs = options.epochs
    options, budget = _sized(options, train_data, val_data, parallel)
    config = options.train_config()
    requested_augment = options.augment
    options = options.replace(augment=resolve_augment(options.augment, options.strategy))
    if options.deterministic:
        set_deterministic()
    generator = seed_everything(options.seed)
    source = _build_source(options, scratch=strategy_of(options.strategy).reinitialise)
    # --lr auto: a stand-in rate until the range test has run on the built model
    plan = _plan(options.replace(lr=options.lr or FALLBACK_LR), source)
    inputs = _checked_inputs(options, source, train_data, val_data)
    log.info("source: %s (%s)", source.spec, source.weights.description)
    torch.manual_seed(options.seed)  # the new head's initialisation
    model = TargetModel(source.backbone, len(train_data.classes), dropout=options.dropout)
    device = parallel.device if parallel is not None else resolve_device(options.device)
    if parallel is not None and inputs.why_one_process is not None:
        raise ConfigError(inputs.why_one_process)
    speedups = accel.resolve(options, device)
    loaders = build_loaders(
        options, source, inputs, plan, model, (train_data, val_data),
        generator=generator, device=device, parallel=parallel, speedups=speedups,
    )  # fmt: skip
    solved = solves_head(options, plan, loaders, inputs, parallel, train_data)
    unused = [f"--{k} {v:g}" for k, v in (("epochs", given_epochs), ("lr", options.lr)) if v]
    if solved and unused:  # said with the plan (inner runs: -v only)
        log.info(
            "%s: the head is solved on the frozen features in one step (L-BFGS), not "
            "trained by epochs at a rate; --no-solve-head trains it by epochs instead",
            " and ".join(unused),
        )
    lr_curve, lr_rule = None, None
    if options.lr is None and not solved and random_weights(plan, source) and not sweep:
        options = options.replace(lr=RANDOM_WEIGHTS_LR)
        plan = _plan(options, source)
        lr_rule = RANDOM_WEIGHTS_RULE
        log.info("learning rate: %.3g (%s)", RANDOM_WEIGHTS_LR, lr_rule)
    elif (options.lr is None and not solved) or sweep:
        # on the new (random) head: a solved one starts at the curve's lowest loss and
        # would make every rate look too high
        lr_curve = find_lr(
            loaders.model, plan, loaders.train, config, device=device, fit_steps=budget.steps,
            rule=LR_RULES.get(inputs.kind, LR_RULE), announce=not sweep,
        )  # fmt: skip
        found = lr_curve.suggestion if parallel is None else parallel.gather(lr_curve.suggestion)[0]
        if options.lr is None:
            options = options.replace(lr=found)
            plan = _plan(options, source)
    start = None
    if starts_solved(options, plan, inputs, parallel):
        feats = cached_head.backbone_features(options, source, train_data, device)
        start = solved_start(model, feats, torch.as_tensor(train_data.targets))
        log.info("the %d head-only epochs: the head is solved instead", plan.head_epochs)
        plan = replace(plan, head_epochs=0)
    log.info("%s", format_plan(plan))
    if solved:
        log.info("head: solved on the cached features (L-BFGS, L2 by cross-validation)")
    else:
        log.info("%s", budget.describe())
        _warn_few_steps(len(loaders.train), config.epochs)
    return Prepared(
        options, config, budget, source, inputs, plan, model, loaders, device, speedups,
        solved, start, lr_curve, requested_augment, t_start, lr_rule,
    )  # fmt: skip


def _sized(
    options: FitOptions,
    train_data: LabeledData,
    val_data: LabeledData | None,
    parallel: Parallel | None,
) -> tuple[FitOptions, Budget]:
    """``options`` with the budget's batch size, epochs and selection (what was given stays)."""
    budget = size_budget(
        len(train_data),
        len(val_data) if val_data is not None else 0,
        batch_size=options.batch_size,
        epochs=options.epochs,
        select=None if options.select == Select.AUTO else str(options.select),
        patience=options.patience,
        multiple_of=parallel.world if parallel is not None else 1,
    )
    sized = options.replace(
        batch_size=budget.batch_size, epochs=budget.epochs, select=budget.select
    )
    return sized, budget


def _checked_inputs(
    options: FitOptions, source: Source, train_data: LabeledData, val_data: LabeledData | None
) -> Inputs:
    """The source's inputs at ``--max-length``, the data checked against them."""
    inputs = source.inputs.limited(options.max_length, source.spec)
    inputs.check(train_data, where=options.data, model=source.spec)
    if val_data is not None:
        inputs.check(val_data, where=options.val or options.data, model=source.spec)
    return inputs


def _plan(options: FitOptions, source: Source) -> Plan:
    """The plan ``options.strategy`` makes for ``source``'s stages (LoRA's settings with
    the source's default target modules)."""
    lora = None
    if strategy_of(options.strategy).adapters:
        lora = lora_settings(
            r=options.lora_r,
            alpha=options.lora_alpha,
            dropout=options.lora_dropout,
            targets=options.lora_targets,
            default=source.lora_targets,
        )
    if options.lr is None:
        raise ConfigError("--lr auto: the range test picks the rate before the plan is made")
    return make_plan(
        options.strategy,
        source.stage_names,
        lr=options.lr,
        backbone_lr_mult=options.backbone_lr_mult,
        weight_decay=options.weight_decay,
        leading_stages=source.backbone.leading_stages,
        layer_decay=options.layer_decay,
        lora=lora,
        head_epochs=options.head_epochs,
    )


def _warn_few_steps(batches: int, epochs: int) -> None:
    """Fewer than :data:`MIN_STEPS` optimizer steps rarely train a new head: say so."""
    steps = batches * epochs
    if steps < MIN_STEPS:
        log.warning(
            "only %d optimizer steps (%d batches x %d epochs): the new head may not converge; "
            "consider more --epochs, a smaller --batch-size or a higher --lr",
            steps,
            batches,
            epochs,
        )


def _metrics(history: History) -> dict[str, Any]:
    """The best epoch's metrics, as ``headstart.json`` records them."""
    best = history.best()
    return {
        "best_epoch": history.best_epoch,
        "epochs_run": len(history.epochs),
        "stopped_early": history.stopped_early,
        "train_loss": best.train_loss,
        "train_acc": best.train_acc,
        "val_loss": best.val_loss,
        "val_acc": best.val_acc,
        "val_f1": best.val_f1,
    }


def _augmentation(
    requested: str, resolved: str, feature_cache: dict[str, Any], inputs: Inputs
) -> dict[str, Any]:
    """What ``--augment`` asked for, the augmentation the training inputs really got, and
    why (``headstart.json``, report.md and compare say it)."""
    if inputs.why_not_augmented is not None:
        return {"requested": requested, "applied": "none", "why": inputs.why_not_augmented}
    views = int(feature_cache.get("views", 0)) if feature_cache.get("used") else 0
    if resolved != "none" and feature_cache.get("used") and views == 0:
        applied, why = (
            "none",
            f"the feature cache holds features of un-augmented images (--augment {requested} "
            "is not applied; --feature-cache-views K caches K augmented views)",
        )
    elif resolved != "none" and views:
        applied, why = f"{resolved}, {views} cached view(s)", "--feature-cache-views"
    elif requested == "auto":
        applied = resolved
        why = (
            "--augment auto: linear evaluation fits the head on un-augmented images"
            if resolved == "none"
            else "--augment auto: light when the backbone trains"
        )
    else:
        applied, why = resolved, f"--augment {requested}"
    return {"requested": requested, "applied": applied, "why": why}

"""The Python API: every command the CLI offers is a function here.

- :func:`fit` builds the target model (source minus its output layer plus a new head),
  applies the plan, trains, and writes a run dir.
- :func:`pretrain` trains a source from scratch on a source data set (``file:RUN`` then
  uses it).
- :func:`evaluate` and :func:`predict` use a finished run dir and nothing else.
- :class:`HeadstartClassifier` wraps them in the scikit-learn style.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from headstart import accel, headtrain
from headstart._io import atomic_write_json, atomic_write_text
from headstart.checkpoint import Checkpointer, checkpoint_dir, is_resumable, kill_point
from headstart.data import (
    UNLABELLED,
    ImageDataset,
    LabeledData,
    data_checks,
    list_inputs,
    load_data,
    make_transform,
    resolve_augment,
    stratified_split,
)
from headstart.determinism import EpochBatchSampler, SeededDataset, set_deterministic
from headstart.distributed import Parallel, in_launched_group, launch
from headstart.errors import ConfigError, DataError
from headstart.model import TargetModel
from headstart.options import FitOptions, PretrainOptions
from headstart.plan import Plan, check_head_epochs, format_plan, make_plan, parse_strategy
from headstart.report import plot_confusion, plot_curves, write_report_md
from headstart.run import LoadedRun, load_run, prepare_out, write_run
from headstart.scan import scan_images
from headstart.sources import BuildOptions, Source, build_source, parse_source_spec
from headstart.textdata import TextData, load_labelled, loader_order, read_texts, text_loader
from headstart.train import (
    EpochMetrics,
    History,
    Predictions,
    predict_loader,
    resolve_device,
    seed_everything,
    train,
)

if TYPE_CHECKING:
    from headstart.tracking import Tracker

__all__ = [
    "EvalResult",
    "FitOptions",
    "FitResult",
    "HeadstartClassifier",
    "PretrainOptions",
    "evaluate",
    "fit",
    "predict",
    "pretrain",
]

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    run_dir: Path
    model: TargetModel
    classes: list[str]
    plan: Plan
    history: History
    source: dict[str, Any]
    metrics: dict[str, Any]
    timings: dict[str, float]

    def summary(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "source": self.source["spec"],
            "strategy": self.plan.strategy,
            "classes": self.classes,
            "metrics": self.metrics,
            "timings": self.timings,
        }


def _default_out(kind: str) -> str:
    return str(Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}")


def _loader(
    data: LabeledData,
    source_pre: Any,
    *,
    train: bool,
    augment: str,
    batch_size: int,
    workers: int,
    generator: torch.Generator | None = None,
    seed: int = 0,
    parallel: Parallel | None = None,
) -> DataLoader[Any]:
    transform = make_transform(
        source_pre, train=train, augment=augment, allow_hflip=data.allow_hflip
    )
    dataset: Dataset[Any] = ImageDataset(data, transform, source_pre.channels)
    if not train or augment == "none":  # the same tensor every epoch: prepare it once
        dataset = _materialise(dataset, source_pre, len(data))
    if not train:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            # Its own generator: a loader without one draws its workers' base seed from
            # torch's global generator, which would move dropout's stream with --workers.
            generator=torch.Generator(),
        )
    world, rank = (parallel.world, parallel.rank) if parallel is not None else (1, 0)
    # BatchNorm cannot train on a batch of one example: drop a last (global) batch that
    # would leave a process with fewer than two.
    rest = len(data) % batch_size
    drop_last = len(data) > batch_size and 0 < rest < 2 * world
    # Order and augmentation are a function of (seed, epoch, position): the same with any
    # number of workers or processes, and replayable mid-epoch (headstart.determinism).
    sampler = EpochBatchSampler(
        len(data), batch_size, seed=seed, drop_last=drop_last, rank=rank, world=world
    )
    return DataLoader(
        SeededDataset(dataset),
        batch_sampler=sampler,
        num_workers=workers,
        generator=generator,
        persistent_workers=workers > 0,
    )


# Evaluation transforms are deterministic: decode and resize each image once per run,
# not once per epoch, while the result fits in this budget.
EVAL_CACHE_BYTES = 512 * 1024 * 1024
AUTO = "auto"  # --strategy auto: measure, then choose (headstart.recommend)
# Fewer optimizer steps than this rarely train a new head to convergence: say so.
MIN_STEPS = 50
# Evaluation needs no gradients: bigger batches cost little memory and save overhead.
EVAL_BATCH = 128


def _materialise(dataset: Dataset[Any], pre: Any, n: int) -> Dataset[Any]:
    from headstart.pipeline import preprocessed

    assert isinstance(dataset, ImageDataset)
    return preprocessed(dataset, pre.input_size)


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
        progress=options.progress,
    )


def _split(options: FitOptions, data: LabeledData) -> tuple[LabeledData, LabeledData | None]:
    if options.val:
        return data, _load_labelled(options, options.val, classes=data.classes)
    if not 0.0 <= options.val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in [0, 1) (got {options.val_fraction})")
    if options.val_fraction == 0:
        return data, None
    train_idx, val_idx = stratified_split(
        data.targets, val_fraction=options.val_fraction, seed=options.seed, classes=data.classes
    )
    return (
        data.subset(
            train_idx, note=f"train split ({1 - options.val_fraction:.0%}, seed {options.seed})"
        ),
        data.subset(
            val_idx, note=f"validation split ({options.val_fraction:.0%}, seed {options.seed})"
        ),
    )


def _build_source(options: FitOptions, *, scratch: bool) -> Source:
    build = BuildOptions.of(options)
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
    feature_cache: dict[str, Any] | None = None  # headtrain: whether the cache was used / hit
    speed: dict[str, Any] | None = None  # precision, channels_last, compile, batch size used
    adapter: Any = None  # lora: the trained adapter (merged into the model already)
    max_length: int | None = None  # texts: the truncation length used
    augmentation: dict[str, Any] | None = None  # what --augment asked for and what was applied


def check_options(options: FitOptions) -> None:
    """Fail on a typo in the strategy or source before any slow work."""
    if not options.data:
        raise ConfigError("no training data given (DATA)")
    if options.strategy != AUTO:
        name, _ = parse_strategy(options.strategy)
        check_head_epochs(name, options.head_epochs, options.epochs)
    parse_source_spec(options.source)


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
    epoch's metrics as they are measured (see :func:`headstart.train.train`).
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
    t_start = time.perf_counter()
    config = options.train_config()
    requested_augment = options.augment
    options = replace(options, augment=resolve_augment(options.augment, options.strategy))
    if options.deterministic:
        set_deterministic()
    generator = seed_everything(options.seed)
    source = _build_source(options, scratch=options.strategy == "scratch")
    lora = None
    if options.strategy == "lora":
        from headstart.lora import lora_settings

        lora = lora_settings(
            r=options.lora_r,
            alpha=options.lora_alpha,
            dropout=options.lora_dropout,
            targets=options.lora_targets,
            default=source.lora_targets,
        )
    plan = make_plan(
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
    _check_kind(options, source, train_data)
    log.info("source: %s (%s)", source.spec, source.weights.description)
    log.info("%s", format_plan(plan))
    torch.manual_seed(options.seed)  # the new head's initialisation
    model = TargetModel(source.backbone, len(train_data.classes), dropout=options.dropout)
    device = parallel.device if parallel is not None else resolve_device(options.device)
    if source.text is not None:
        if parallel is not None:
            raise ConfigError("--processes > 1 is for image sources; train text models in one")
        assert isinstance(train_data, TextData)
        use_cache, why_not = False, "a text model (the cache is for image backbones)"
    else:
        use_cache, why_not = headtrain.applies(options, plan)
    if use_cache and parallel is not None:
        use_cache, why_not = False, "several processes: each runs the backbone on its share"
    speedups = accel.resolve(options, device)
    fit_model: torch.nn.Module = model
    feature_cache: dict[str, Any] = {"used": False, "reason": why_not}
    cached = (
        headtrain.prepare(
            options, source, plan, model, train_data, val_data, generator=generator, device=device
        )
        if use_cache
        else None
    )
    if cached is not None and cached.model is None:  # partial:K: its prefix cannot be cached
        use_cache, feature_cache = False, cached.info
    max_length: int | None = None
    if source.text is not None:
        assert isinstance(train_data, TextData)
        max_length = _max_length(options, source)
        train_loader = text_loader(
            train_data.texts(),
            train_data.targets,
            source.text.tokenizer,
            max_length=max_length,
            batch_size=options.batch_size,
            train=True,
            generator=generator,
            workers=options.workers,
            seed=options.seed,
        )
        val_loader = (
            text_loader(
                val_data.texts(),
                val_data.targets,
                source.text.tokenizer,
                max_length=max_length,
                batch_size=max(options.batch_size, EVAL_BATCH),
                train=False,
                workers=options.workers,
            )
            if isinstance(val_data, TextData) and len(val_data)
            else None
        )
    elif use_cache:
        assert cached is not None and cached.model is not None
        assert cached.train_loader is not None
        train_loader, val_loader = cached.train_loader, cached.val_loader
        fit_model, feature_cache = cached.model, cached.info
    else:
        pre = source.preprocessing
        fit_model = accel.wrap(model, speedups, device)
        train_loader = _loader(
            train_data,
            pre,
            train=True,
            augment=options.augment,
            batch_size=options.batch_size,
            workers=options.workers,
            generator=generator,
            seed=options.seed,
            parallel=parallel,
        )
        val_loader = (
            _loader(
                val_data,
                pre,
                train=False,
                augment="none",
                batch_size=max(options.batch_size, EVAL_BATCH),
                workers=options.workers,
            )
            if val_data is not None and len(val_data)
            else None
        )
    steps = len(train_loader) * config.epochs
    if steps < MIN_STEPS:
        log.warning(
            "only %d optimizer steps (%d batches x %d epochs): the new head may not converge; "
            "consider more --epochs, a smaller --batch-size or a higher --lr",
            steps,
            len(train_loader),
            config.epochs,
        )
    t_loaded = time.perf_counter()
    with headtrain.threads_for(fit_model) if use_cache else contextlib.nullcontext():
        history = train(
            fit_model,  # type: ignore[arg-type]
            plan,
            train_loader,
            val_loader,
            config,
            device=device,
            checkpointer=checkpointer,
            parallel=parallel,
            on_epoch=on_epoch,
        )
    t_trained = time.perf_counter()
    model.cpu()
    adapter = None
    if plan.lora is not None:
        from headstart.lora import merge_adapters

        adapter = merge_adapters(model.backbone)  # prediction runs on the merged weights
    best = history.best()
    metrics = {
        "best_epoch": history.best_epoch,
        "epochs_run": len(history.epochs),
        "stopped_early": history.stopped_early,
        "train_loss": best.train_loss,
        "train_acc": best.train_acc,
        "val_loss": best.val_loss,
        "val_acc": best.val_acc,
        "val_f1": best.val_f1,
    }
    timings = {"load_s": t_loaded - t_start, "train_s": t_trained - t_loaded}
    speed = {**speedups.to_dict(), "batch_size": options.batch_size} if not use_cache else None
    augmentation = _augmentation(requested_augment, options.augment, feature_cache, source)
    return Trained(
        model,
        source,
        plan,
        history,
        metrics,
        timings,
        feature_cache=feature_cache,
        speed=speed,
        adapter=adapter,
        max_length=max_length,
        augmentation=augmentation,
    )


def _augmentation(
    requested: str, resolved: str, feature_cache: dict[str, Any], source: Source
) -> dict[str, Any]:
    """What ``--augment`` asked for, the augmentation the training inputs really got, and
    why (``headstart.json``, report.md and compare say it)."""
    if source.text is not None:
        return {"requested": requested, "applied": "none", "why": "texts are not augmented"}
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


DEFAULT_MAX_LENGTH = 128  # tokens: a few sentences; --max-length changes it


def _max_length(options: FitOptions, source: Source) -> int:
    """``--max-length`` (default 128), at most what the text model takes."""
    assert source.text is not None
    if options.max_length is None:
        return min(DEFAULT_MAX_LENGTH, source.text.max_length)
    if options.max_length > source.text.max_length:
        log.warning(
            "--max-length %d: %s takes at most %d tokens; using %d",
            options.max_length,
            source.spec,
            source.text.max_length,
            source.text.max_length,
        )
    return min(options.max_length, source.text.max_length)


def _check_kind(options: FitOptions, source: Source, data: LabeledData) -> None:
    """A text source needs text data, an image source images: say which is which."""
    is_text = isinstance(data, TextData)
    if source.text is not None and not is_text:
        raise DataError(
            f"{options.data}: images, but {source.spec} is a text model; give a CSV, TSV or "
            "JSONL with text and label columns, or a folder of .txt files per class"
        )
    if source.text is None and is_text:
        raise DataError(
            f"{options.data}: texts, but {source.spec} is an image model; use a text source, "
            "e.g. --source hf:FOLDER of a transformers text encoder"
        )


def fit(options: FitOptions, *, kind: str = "fit") -> FitResult:
    """Build the target model, apply the plan, train, and write a complete run dir.

    While it trains, checkpoints go to a hidden folder beside the run dir
    (:mod:`headstart.checkpoint`); ``options.resume`` continues a stopped fit from there.
    With ``options.mlflow_uri`` / ``options.tensorboard`` the run is also tracked there
    (by the main process only, when several train).
    """
    from headstart.tracking import open_tracker

    if in_launched_group() and int(os.environ.get("RANK", "0")) != 0:
        options = replace(options, mlflow_uri=None, tensorboard=None)
    with open_tracker(options) as tracker:
        return _fit(options, kind=kind, tracker=tracker)


def _fit(options: FitOptions, *, kind: str, tracker: Tracker) -> FitResult:
    t_start = time.perf_counter()
    if options.processes < 1:
        raise ConfigError(f"--processes must be at least 1 (got {options.processes})")
    if options.processes > 1 and not in_launched_group():
        if options.resume:
            options = replace(options, out=options.resume)
        else:  # every process must write to (and check) the same folder
            options.train_config()
            out = prepare_out(options.out or _default_out(kind), overwrite=options.overwrite)
            options = replace(options, out=str(out))
        return launch(fit, options, kind=kind)
    parallel = Parallel.from_environment(options) if in_launched_group() else None
    main = parallel is None or parallel.is_main
    if parallel is not None and not (options.out or options.resume):
        raise ConfigError("several processes write one run dir: give it with --out")
    saved: dict[str, Any] | None = None
    if options.resume:
        out = Path(options.resume)
        checkpointer, saved = Checkpointer.open(out)
        options = resumed_options(options, saved)
        kind = str(saved.get("kind", kind))  # fit --resume of a pretrain stays a pretrain
    else:
        options.train_config()  # validates epochs, batch size... before any slow work
        out = prepare_out(options.out or _default_out(kind), overwrite=options.overwrite)
        if is_resumable(out) and not options.overwrite and main:
            raise ConfigError(
                f"--out {out}: a stopped fit's checkpoint is at {checkpoint_dir(out)}; "
                f"continue it with --resume {out}, or start over with --overwrite"
            )
    if parallel is not None:
        parallel.check_batch(options.batch_size)
    if options.checkpoint_every < 0:
        raise ConfigError(f"--checkpoint-every must be 0 or more (got {options.checkpoint_every})")
    check_options(options)
    data = load_training_data(options)
    train_data, val_data = _split(options, data)
    checks = data_checks(data, train_data, val_data)  # warns about leakage before training
    fingerprints = {
        "train": train_data.fingerprint(),
        "val": val_data.fingerprint() if val_data is not None else None,
    }
    recommendation: dict[str, Any] | None = None
    if saved is not None:
        if saved["fingerprints"] != fingerprints:
            raise DataError(
                f"--resume {out}: the data ({options.data}) changed since the checkpoint was "
                "written; resume with the same data, or start over with --overwrite"
            )
        options = replace(options, **saved["resolved"])
        recommendation = saved["recommendation"]
    else:
        requested = options
        if options.strategy == AUTO:
            from headstart.recommend import recommend_for

            # Measured on the training part only: the validation split stays unseen.
            rec = recommend_for(options, train_data)
            recommendation = rec.to_dict()
            options = replace(options, **rec.options())
        checkpointer = Checkpointer.create(
            out,
            {
                "kind": kind,
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
    if not main:  # only the main process writes the run dir
        return _result(out, trained, data.classes, {})
    source, plan, metrics = trained.source, trained.plan, trained.metrics
    timings = dict(trained.timings)
    timings["load_s"] = (time.perf_counter() - t_start) - timings["train_s"]
    meta: dict[str, Any] = {
        "kind": kind,
        "source": source.describe(),
        "classes": list(data.classes),
        "preprocessing": source.preprocessing.to_dict(),
        "plan": plan.to_dict(),
        "dropout": options.dropout,
        "data": {
            "train": train_data.describe(),
            "val": val_data.describe() if val_data is not None else None,
            "spec": options.data,
            "checks": checks,
        },
        "metrics": metrics,
        "recommendation": recommendation,
        "resumed": saved is not None,
        **(
            {
                "text": {
                    **source.text.to_dict(),
                    "max_length": trained.max_length,
                    "text_col": options.text_col,
                    "label_col": options.label_col,
                }
            }
            if source.text is not None
            else {}
        ),
        "config": {k: v for k, v in asdict(options).items() if k != "progress"},
        "timings": timings,
        "feature_cache": trained.feature_cache,
        "augmentation": trained.augmentation,
        "accel": trained.speed,
    }
    rows = trained.history.rows()

    def extras(folder: Path) -> None:
        if source.save_files is not None:  # config + tokenizer: the run rebuilds alone
            source.save_files(folder)
        if trained.adapter is not None:
            from headstart.lora import save_adapter

            save_adapter(folder, trained.adapter)
        title = f"{source.spec} · {plan.strategy} · {options.data}"
        plot_curves(rows, folder / "curves.png", title=title)
        timings["total_s"] = time.perf_counter() - t_start
        write_report_md(meta, rows, folder / "report.md")

    kill_point("run:write")
    run_dir = write_run(
        out,
        model=trained.model,
        meta=meta,
        metrics_rows=rows,
        extras=extras,
        overwrite=options.overwrite or saved is not None,
    )
    checkpointer.remove()  # the run dir is complete: nothing left to resume
    timings["total_s"] = time.perf_counter() - t_start
    tracker.log_metrics({f"final_{k}": v for k, v in metrics.items()}, step=len(rows))
    tracker.log_artifacts(run_dir)
    log.info("run dir: %s", run_dir)
    return _result(run_dir, trained, data.classes, timings)


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
        "cache_dir",
        "checkpoint_every",
        "deterministic",
    }
)


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
            conflicts.append(f"{flag} {value} (the checkpoint has {stored[f.name]})")
    if conflicts:
        raise ConfigError(
            f"--resume {given.resume}: {'; '.join(conflicts)}; a resumed run keeps the "
            "options it started with: drop these flags"
        )
    stored.pop("out", None)
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
    if options.strategy != "scratch" or options.weights != "none":
        raise ConfigError("pretrain trains from scratch: strategy scratch, weights none")
    return fit(options, kind="pretrain")


@dataclass
class EvalResult:
    run_dir: Path
    out_dir: Path
    accuracy: float
    macro_f1: float
    n_items: int
    per_class: list[dict[str, Any]]
    confusion: list[list[int]]

    def summary(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "out_dir": str(self.out_dir),
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "n_items": self.n_items,
            "per_class": self.per_class,
            "confusion_matrix": self.confusion,
        }


def _as_run(run: str | Path | LoadedRun) -> LoadedRun:
    return run if isinstance(run, LoadedRun) else load_run(run)


def _predict_data(
    run: LoadedRun, data: LabeledData, *, batch_size: int, device: str, workers: int = 0
) -> Predictions:
    if run.text is not None:
        return _predict_texts(run, data, batch_size=batch_size, device=device)
    loader = _loader(
        data,
        run.preprocessing,
        train=False,
        augment="none",
        batch_size=batch_size,
        workers=workers,
    )
    dev = resolve_device(device)
    run.model.to(dev)
    try:
        return predict_loader(run.model, loader, dev)
    finally:
        run.model.cpu()


def _predict_texts(
    run: LoadedRun, data: LabeledData, *, batch_size: int, device: str
) -> Predictions:
    """Predictions for texts, in the order of ``data`` (the loader groups by length)."""
    assert run.text is not None
    if not isinstance(data, TextData):
        raise DataError(
            f"{data.spec}: images, but {run.path} is a text model; give texts (a CSV, TSV or "
            "JSONL with text and label columns, or a folder of .txt files per class)"
        )
    loader = text_loader(
        data.texts(),
        data.targets,
        run.text.tokenizer,
        max_length=int(run.meta.get("text", {}).get("max_length", run.text.max_length)),
        batch_size=batch_size,
        train=False,
    )
    dev = resolve_device(device)
    run.model.to(dev)
    try:
        preds = predict_loader(run.model, loader, dev)
    finally:
        run.model.cpu()
    order = loader_order(loader)
    probs = np.empty_like(preds.probs)
    targets = np.empty_like(preds.targets)
    probs[order], targets[order] = preds.probs, preds.targets
    return Predictions(targets=targets, probs=probs, loss=preds.loss)


def _text_columns(run: LoadedRun, text_col: str | None, label_col: str | None) -> dict[str, Any]:
    """The columns to read: as given, else the ones the run was trained with."""
    saved = run.meta.get("text") or {}
    return {
        "text_col": text_col or saved.get("text_col"),
        "label_col": label_col or saved.get("label_col"),
    }


def evaluate(
    run: str | Path | LoadedRun,
    data: str,
    *,
    out: str | Path | None = None,
    batch_size: int = 64,
    device: str = "auto",
    text_col: str | None = None,
    label_col: str | None = None,
) -> EvalResult:
    """Score a run on labelled data: accuracy, macro-F1, a per-class table, a confusion PNG.

    Files go to ``out`` (default ``RUN/eval``): ``eval.json``, ``per_class.csv`` and
    ``confusion_matrix.png``.
    """
    from sklearn.metrics import classification_report, confusion_matrix

    loaded = _as_run(run)
    if loaded.text is not None:
        labelled = load_labelled(
            data, classes=loaded.classes, **_text_columns(loaded, text_col, label_col)
        )
    else:
        labelled = load_data(data, classes=loaded.classes)
    if not len(labelled):
        raise DataError(f"{data}: no items to evaluate")
    preds = _predict_data(loaded, labelled, batch_size=batch_size, device=device)
    labels = list(range(len(loaded.classes)))
    report = classification_report(
        preds.targets,
        preds.preds,
        labels=labels,
        target_names=loaded.classes,
        output_dict=True,
        zero_division=0,
    )
    per_class = [
        {
            "class": name,
            "precision": report[name]["precision"],
            "recall": report[name]["recall"],
            "f1": report[name]["f1-score"],
            "support": int(report[name]["support"]),
        }
        for name in loaded.classes
    ]
    matrix = confusion_matrix(preds.targets, preds.preds, labels=labels)
    out_dir = Path(out) if out is not None else loaded.path / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    result = EvalResult(
        run_dir=loaded.path,
        out_dir=out_dir,
        accuracy=preds.accuracy,
        macro_f1=preds.macro_f1,
        n_items=len(labelled),
        per_class=per_class,
        confusion=matrix.tolist(),
    )
    plot_confusion(
        matrix,
        loaded.classes,
        out_dir / "confusion_matrix.png",
        title=f"{data}: accuracy {result.accuracy:.3f} on {result.n_items} items",
    )
    csv_lines = ["class,precision,recall,f1,support"] + [
        f"{r['class']},{r['precision']:.4f},{r['recall']:.4f},{r['f1']:.4f},{r['support']}"
        for r in per_class
    ]
    atomic_write_text(out_dir / "per_class.csv", "\n".join(csv_lines) + "\n")
    atomic_write_json(out_dir / "eval.json", {"data": str(data), **result.summary()})
    return result


def predict(
    run: str | Path | LoadedRun,
    inputs: Sequence[str | Path],
    *,
    top_k: int = 1,
    batch_size: int = 64,
    device: str = "auto",
    texts: Sequence[str] = (),
    text_col: str | None = None,
    skip_bad: bool = False,
) -> list[dict[str, Any]]:
    """Label and probability for each input.

    Image runs: image files (folders are searched for images).  Text runs: ``texts``,
    plus files of texts in ``inputs`` (a ``.txt`` file holds one text per line; a CSV,
    TSV or JSONL file its text column, ``text_col`` or the run's).  Each row has the
    input's ``path`` (for a text: its file and line, or ``--text N``).  Image files are
    checked first, all of them (:mod:`headstart.scan`): unreadable ones are one error
    listing them, or with ``skip_bad`` rows with an ``error`` and no label.
    """
    loaded = _as_run(run)
    data: LabeledData
    every: list[Path] = []  # image inputs, readable or not, in order
    unreadable: dict[Path, str] = {}
    if loaded.text is not None:
        pairs = read_texts(inputs, text_col=_text_columns(loaded, text_col, None)["text_col"])
        pairs += [(f"--text {i}", t) for i, t in enumerate(texts, start=1)]
        if not pairs:
            raise DataError("no texts given; pass --text TEXT or files of texts")
        empty = [w for w, t in pairs if not t.strip()]
        if empty:
            raise DataError(f"empty text: {', '.join(empty[:10])}")
        names = [w for w, _ in pairs]
        data = TextData(
            spec="predict",
            classes=loaded.classes,
            items=[t for _, t in pairs],
            targets=np.full(len(pairs), UNLABELLED, dtype=np.int64),
            rows=names,
        )
    else:
        if texts:
            raise ConfigError(f"--text: {loaded.path} is an image model; pass image files")
        paths = list_inputs(inputs)
        unreadable = {Path(c.path): str(c.problem) for c in scan_images(paths) if not c.ok}
        if unreadable and not skip_bad:
            listed = [f"{p} ({why})" for p, why in unreadable.items()]
            raise DataError(
                f"{len(unreadable)} unreadable image(s): {', '.join(listed[:10])}"
                + (f" and {len(listed) - 10} more" if len(listed) > 10 else "")
                + "; fix or remove them, or pass --skip-bad to label the others"
            )
        every = paths
        paths = [p for p in paths if p not in unreadable]
        if not paths:
            raise DataError("none of the inputs is a readable image")
        names = [str(p) for p in paths]
        data = LabeledData(
            spec="predict",
            classes=loaded.classes,
            items=list(paths),
            targets=np.full(len(paths), UNLABELLED, dtype=np.int64),
        )
    preds = _predict_data(loaded, data, batch_size=batch_size, device=device)
    k = max(1, min(top_k, len(loaded.classes)))
    out: list[dict[str, Any]] = []
    for i, (path, p) in enumerate(zip(names, preds.probs, strict=True)):
        order = np.argsort(-p)[:k]
        out.append(
            {
                "path": path,
                **({"text": data.items[i]} if loaded.text is not None else {}),
                "label": loaded.classes[int(order[0])],
                "probability": float(p[order[0]]),
                "top": [
                    {"label": loaded.classes[int(i)], "probability": float(p[i])} for i in order
                ],
            }
        )
    if unreadable:  # --skip-bad: every input in order, the unreadable ones with why
        labelled = {row["path"]: row for row in out}
        out = [
            {"path": str(p), "label": None, "probability": None, "top": [], "error": unreadable[p]}
            if p in unreadable
            else labelled[str(p)]
            for p in every
        ]
    return out


class HeadstartClassifier:
    """scikit-learn style: ``HeadstartClassifier(source=..., strategy=...).fit(data)``.

    ``__init__`` only stores options (any :class:`FitOptions` field); ``fit`` returns
    ``self`` and sets ``classes_``, ``model_``, ``plan_``, ``history_``, ``run_dir_``.
    """

    def __init__(self, **options: Any) -> None:
        valid = {f.name for f in fields(FitOptions)} - {"data"}
        unknown = sorted(set(options) - valid)
        if unknown:
            raise ConfigError(
                f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
            )
        self.options = options

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return dict(self.options)

    def fit(self, data: str | Path) -> HeadstartClassifier:
        result = fit(FitOptions(data=str(data), **self.options))
        self.run_dir_ = result.run_dir
        self.classes_ = result.classes
        self.model_ = result.model
        self.plan_ = result.plan
        self.history_ = result.history
        self.metrics_ = result.metrics
        self._run = load_run(result.run_dir)
        return self

    @classmethod
    def load(cls, run_dir: str | Path) -> HeadstartClassifier:
        """A fitted classifier from a run dir."""
        loaded = load_run(run_dir)
        self = cls()
        self.run_dir_ = loaded.path
        self.classes_ = loaded.classes
        self.model_ = loaded.model
        self.plan_ = Plan.from_dict(loaded.meta["plan"])
        self._run = loaded
        return self

    def _loaded(self) -> LoadedRun:
        if not hasattr(self, "_run"):
            raise ConfigError("this HeadstartClassifier is not fitted yet; call fit(data) first")
        return self._run

    def _rows(self, inputs: Sequence[str | Path], top_k: int = 1) -> list[dict[str, Any]]:
        run = self._loaded()
        if run.text is not None:  # a text model labels the strings themselves
            return predict(run, [], texts=[str(t) for t in inputs], top_k=top_k)
        return predict(run, inputs, top_k=top_k)

    def predict(self, inputs: Sequence[str | Path]) -> list[str]:
        """Labels of image files, or of texts for a text model."""
        return [r["label"] for r in self._rows(inputs)]

    def predict_proba(self, inputs: Sequence[str | Path]) -> np.ndarray:
        rows = self._rows(inputs, top_k=len(self.classes_))
        probs = np.zeros((len(rows), len(self.classes_)))
        index = {c: i for i, c in enumerate(self.classes_)}
        for r, row in enumerate(rows):
            for t in row["top"]:
                probs[r, index[t["label"]]] = t["probability"]
        return probs

    def score(self, data: str) -> float:
        """Accuracy on labelled data (same forms as ``fit``)."""
        return evaluate(self._loaded(), data).accuracy

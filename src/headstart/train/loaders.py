"""The model a fit trains and its loaders: over the training inputs themselves, or over
the frozen backbone's cached features where the plan allows (:mod:`headstart.train.cached_head`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from headstart.config.options import FitOptions
from headstart.data.labelled import LabeledData
from headstart.plan.make import Plan
from headstart.runtime import loader_workers
from headstart.sources import Source
from headstart.sources.inputs import Inputs
from headstart.sources.target import TargetModel
from headstart.train import accel, cached_head
from headstart.train.loop import EVAL_BATCH
from headstart.train.parallel import Parallel

__all__ = ["Loaders", "build_loaders", "use_feature_cache"]


@dataclass
class Loaders:
    """What trains: the model (the target model, sped up, or the head on cached
    features), its loaders, and what ``headstart.json`` says of the feature cache."""

    model: torch.nn.Module
    train: DataLoader[Any]
    val: DataLoader[Any] | None
    feature_cache: dict[str, Any]
    cached: bool = False  # the model is the head on cached features
    workers: int = 0  # loader processes (--workers, or runtime.loader_workers' choice)


def use_feature_cache(
    options: FitOptions, inputs: Inputs, plan: Plan, parallel: Parallel | None
) -> tuple[bool, str]:
    """Whether the head trains on cached features, and why not when it does not."""
    if inputs.why_no_feature_cache is not None:
        return False, inputs.why_no_feature_cache
    use_cache, why_not = cached_head.applies(options, plan)
    if use_cache and parallel is not None:
        return False, "several processes: each runs the backbone on its share"
    return use_cache, why_not


def build_loaders(
    options: FitOptions,
    source: Source,
    inputs: Inputs,
    plan: Plan,
    model: TargetModel,
    split: tuple[LabeledData, LabeledData | None],
    *,
    generator: torch.Generator,
    device: torch.device,
    parallel: Parallel | None,
    speedups: accel.Accel,
) -> Loaders:
    """The model to train and its loaders over the ``(train, validation)`` split: over
    cached features where the plan allows (:mod:`headstart.train.cached_head`), else over
    the inputs themselves."""
    train_data, val_data = split
    batch_size = options.batch_size
    assert batch_size is not None, "the budget is sized before the loaders are built"
    world, rank = (parallel.world, parallel.rank) if parallel is not None else (1, 0)
    # resolved here, not in the options: a run resumed on another device chooses again
    workers = loader_workers(options.workers, device, world, kind=inputs.kind)
    use_cache, why_not = use_feature_cache(options, inputs, plan, parallel)
    feature_cache: dict[str, Any] = {"used": False, "reason": why_not}
    if use_cache:
        cached = cached_head.prepare(
            options, source, plan, model, train_data, val_data, generator=generator, device=device
        )
        if cached.model is not None:
            assert cached.train_loader is not None
            return Loaders(
                cached.model, cached.train_loader, cached.val_loader, cached.info, cached=True
            )
        feature_cache = cached.info  # partial:K: its prefix cannot be cached
    fit_model = accel.wrap(model, speedups, device) if inputs.speedups else model
    train_loader = inputs.train_loader(
        train_data,
        augment=options.augment,
        batch_size=batch_size,
        workers=workers,
        generator=generator,
        seed=options.seed,
        world=world,
        rank=rank,
    )
    val_loader = None
    if val_data is not None and len(val_data):
        val_loader, _ = inputs.eval_loader(
            val_data, batch_size=max(batch_size, EVAL_BATCH), workers=workers
        )
    return Loaders(fit_model, train_loader, val_loader, feature_cache, workers=workers)

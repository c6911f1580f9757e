"""What a fit decides from its data before (or instead of) the loop: the learning rate
by a range test, and a frozen backbone's head solved to convergence.

- ``--lr auto`` (the default): :func:`find_lr` runs the learning-rate range test
  (:mod:`headstart.train.lr_find`) on the very model, plan, loader and loss the loop will
  use, a tenth of the fit's steps at most, and takes a third of the rate at its lowest
  loss (:data:`LR_RULE`); model, optimizer and random state come back untouched, so the
  fit that follows is the fit it would have been with ``--lr`` set to that rate.
- A frozen backbone whose features are cached (``linear``): :func:`solve_head` fits the
  head with :func:`headstart.train.head_solver.solve_head` (full-batch L-BFGS on the
  multinomial logistic loss, L2 chosen by cross-validation on the training part) instead
  of epochs of AdamW; the head is the same ``nn.Linear`` in the same target model.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from headstart.config.options import FitOptions
from headstart.config.train import TrainConfig
from headstart.data.labelled import LabeledData
from headstart.features.extract import extract_features
from headstart.plan.apply import apply_plan, set_train_mode
from headstart.plan.make import Plan
from headstart.sources.base import Source
from headstart.sources.inputs import Inputs
from headstart.sources.target import TargetModel
from headstart.train.cached_head import CachedHead
from headstart.train.head_solver import HeadSolution
from headstart.train.head_solver import solve_head as solve
from headstart.train.loaders import Loaders
from headstart.train.loop import EVAL_BATCH, EpochMetrics, History, Objective, predict_loader
from headstart.train.lr_find import FALLBACK_LR, LrCurve, lr_range_test
from headstart.train.parallel import Parallel

__all__ = [
    "LR_RULE",
    "LR_RULES",
    "LR_SWEEP",
    "RANDOM_WEIGHTS_LR",
    "RANDOM_WEIGHTS_RULE",
    "extracted_features",
    "find_lr",
    "loader_features",
    "random_weights",
    "safe_rate",
    "solve_frozen_head",
    "solve_head",
    "solved_start",
    "solver_record",
    "solves_head",
    "starts_solved",
    "sweep_steps",
]

log = logging.getLogger(__name__)

# The rates swept: from far below any useful rate to where AdamW diverges.
LR_SWEEP = (1e-6, 1.0)
# The rule that reads the rate off the curve.  Digits 5-9, 20 per class, default budget
# (300 steps), test accuracy with the rate each rule picked from the same 30-step sweep:
#   full       valley 0.938  steepest 0.965  minimum/10 0.964
#   scratch    valley 0.960  steepest 0.959  minimum/10 0.972
#   partial:2  valley 0.942  steepest 0.965  minimum/10 0.959
# On a short, noisy sweep the longest falling run (valley) starts in the noise and picks
# a rate too low, and the steepest point can be a blip (digits full, one seed of three:
# 6e-5, test 0.24).  Between a tenth and a third of the lowest point, mean of seeds 0-2
# (/tmp/exp/rules2.py in the notes; bench/_defaults_data.py's cases):
#                      minimum/10      minimum/3
#   digits     full    0.970           0.966
#              scratch 0.962           0.956
#   shifted    full    0.944           0.944
#              scratch 0.951           0.947
#   clip-art   full    0.421           0.455
#              scratch 0.451           0.471
# A third loses half a point on the digits and gains 2 to 3.4 on clip-art, where batches
# of 8 noisy images make the loss bottom out early: a third it is.
LR_RULE = "minimum/3"
# Text encoders (transformers) read a tenth: all-MiniLM-L6-v2 on BBC News (bench/defaults.py's
# case, `--strategy full`): a third (4.6e-3) scored 0.908 and 0.912 on seeds 0 and 1 where
# a tenth scored 0.926 and 0.914, and at a third plain full diverged to chance on one of
# the race's folds (seed 2, held-out 0.204).  Transformers are fine-tuned at rates a
# decade below a small CNN's (BERT: 2e-5 to 5e-5 for the body, here a tenth of the head's).
LR_RULES = {"images": LR_RULE, "texts": "minimum/10"}
# A network from random weights (``scratch``) gets AdamW's usual rate, not a reading of
# the range test: with random weights the loss falls on any rate of a short sweep, and
# its curve misleads both ways.  The bench grid (bench/defaults.py, 2398ccc; lr
# {1e-3..3e-2} x epochs {10, 30} x batch {8, 32}) has scratch at 1e-3 with the default
# budget (30 epochs at batch 8 for 80 images) at 0.971 / 0.960 / 0.464 against the
# grid's best 0.971 / 0.960 / 0.468 (digits, shifted digits, clip-art), where the sweep
# read 0.021-0.033 on the digits (scratch 0.941 on shifted digits, seeds 0.941-0.951).
# On one GPU (bench/gpu_precision.py, resnet50 from random weights, 1,198 digits at 224
# pixels) the sweep read 1e-4 the other way: test 0.38 against 0.70 at 1e-3.
RANDOM_WEIGHTS_LR = 1e-3
RANDOM_WEIGHTS_RULE = "random weights: AdamW's usual 1e-3 (no range test)"


def random_weights(plan: Plan, source: Source) -> bool:
    """Whether the backbone trains from random weights: ``scratch``, or a source built
    with ``--weights none`` (these take :data:`RANDOM_WEIGHTS_LR` under ``--lr auto``)."""
    return plan.reinitialise or not source.weights.pretrained


MIN_SWEEP, MAX_SWEEP = 30, 100


def sweep_steps(fit_steps: int) -> int:
    """Steps of the range test: a tenth of the fit's, within 30..100 (fastai sweeps 100)."""
    return max(MIN_SWEEP, min(MAX_SWEEP, fit_steps // 10))


def find_lr(
    model: nn.Module,
    plan: Plan,
    loader: DataLoader[Any],
    config: TrainConfig,
    *,
    device: torch.device,
    fit_steps: int,
    rule: str = LR_RULE,
    announce: bool = True,
) -> LrCurve:
    """The range test on what the loop will train (``plan``'s groups, their ratios kept),
    in the loop's train/eval modes and loss; everything restored afterwards."""
    model.to(device)
    groups = apply_plan(model, plan)
    objective = Objective(config.label_smoothing)
    optimizer = objective.optimizer(groups)
    set_train_mode(model, plan)
    steps = sweep_steps(fit_steps)

    def loss(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = objective.loss_fn(m(x), y)
        return out

    curve = lr_range_test(
        model,
        optimizer,
        loader,
        loss,
        start_lr=LR_SWEEP[0],
        end_lr=LR_SWEEP[1],
        num_steps=steps,
        # fastai's 0.98 averages over ~50 steps: too long a memory for a short sweep
        smooth=1 - 4 / steps,
        rule=rule,
        device=device,
        generators=[loader.generator] if loader.generator is not None else [],
    )
    curve = safe_rate(curve)
    if not announce:  # the caller says it (headstart lr-find)
        return curve
    log.info(
        "learning rate: %.3g by the range test (%s; %d steps, %.1fs)",
        curve.suggestion,
        curve.rule,
        curve.steps,
        curve.seconds,
    )
    return curve


def safe_rate(curve: LrCurve) -> LrCurve:
    """A sweep whose loss "never fell" is, on small batches, mostly noise: the lowest
    point happened to come first, and the rule's cap (the rate at the lowest loss) can be
    the start of the sweep, where nothing learns (clip-art, batch 8: 4e-6, test accuracy
    0.18, chance 0.20).  Such a curve gets :data:`FALLBACK_LR`, kept a decade below the
    highest rate the sweep survived, and a warning."""
    if "never fell" not in curve.rule or not curve.lrs:
        return curve
    rate = min(FALLBACK_LR, max(curve.lrs) / 10)
    if rate <= curve.suggestion:
        return curve
    log.warning(
        "learning-rate range test: the loss never clearly fell over the sweep (noisy small "
        "batches?); using %.3g, not %.3g; pass --lr to choose",
        rate,
        curve.suggestion,
    )
    rule = f"{curve.rule}; noise-safe fallback {rate:.3g}"
    return dataclasses.replace(curve, suggestion=rate, rule=rule)


FeatureSet = tuple[torch.Tensor, torch.Tensor]  # features [N, ...], targets [N]


def loader_features(loader: DataLoader[Any] | None) -> FeatureSet | None:
    """The features and targets behind a loader of cached features (training: its first
    view; validation: its tensors)."""
    if loader is None:
        return None
    data = loader.dataset
    if hasattr(data, "views"):
        return data.views[0], data.targets  # type: ignore[attr-defined]
    features, targets = data.tensors  # type: ignore[attr-defined]
    return features, targets


def extracted_features(
    source: Source, data: LabeledData | None, *, device: torch.device, max_length: int | None
) -> FeatureSet | None:
    """The frozen backbone's features of ``data``, run once in memory (texts, which the
    on-disk cache does not hold)."""
    if data is None or not len(data):
        return None
    feats = extract_features(
        source, data, device=str(device), max_length=max_length, progress=False
    )
    return torch.from_numpy(feats.features), torch.as_tensor(feats.targets, dtype=torch.int64)


def solve_head(
    model: CachedHead,
    train: FeatureSet,
    val: FeatureSet | None,
    *,
    device: torch.device,
) -> tuple[History, HeadSolution]:
    """Fit ``model``'s head on the frozen backbone's training features to convergence,
    and measure it as one epoch of the loop would (training and validation loss and
    accuracy)."""
    t0 = time.perf_counter()
    features, targets = train
    solution = solve(features.flatten(1), targets, model.num_classes)
    solution.load_into(model.head)
    log.info("head: %s", solution.describe())
    model.to(device).eval()

    def measured(pair: FeatureSet) -> Any:
        loader = DataLoader(torch.utils.data.TensorDataset(*pair), batch_size=EVAL_BATCH)
        return predict_loader(model, loader, device)

    fitted = measured(train)
    held = measured(val) if val is not None else None
    row = EpochMetrics(
        epoch=1,
        train_loss=fitted.loss,
        train_acc=fitted.accuracy,
        val_loss=held.loss if held is not None else None,
        val_acc=held.accuracy if held is not None else None,
        val_f1=held.macro_f1 if held is not None else None,
        lr_head=0.0,
        lr_backbone=0.0,
        seconds=time.perf_counter() - t0,
    )
    return History(epochs=[row], best_epoch=1), solution


def solved_start(model: TargetModel, features: Any, targets: Any) -> HeadSolution:
    """Start fine-tuning from the head solved on the frozen backbone's features (linear
    probing, then fine-tuning: Kumar et al. 2022, LP-FT): the backbone's first steps then
    follow a head that already fits, not a random one."""
    solution = solve(torch.as_tensor(features).flatten(1), targets, model.head.out_features)
    solution.load_into(model.head)
    log.info("head: starts solved on the frozen features: %s", solution.describe())
    return solution


def solve_frozen_head(
    model: TargetModel,
    loaders: Loaders,
    source: Source,
    split: tuple[LabeledData, LabeledData | None],
    *,
    max_length: int | None,
    device: torch.device,
) -> tuple[History, HeadSolution]:
    """The head solved on the frozen backbone's features: the cached ones (images), or
    extracted once in memory (texts)."""
    if loaders.cached:
        train = loader_features(loaders.train)
        val = loader_features(loaders.val)
    else:
        train = extracted_features(source, split[0], device=device, max_length=max_length)
        val = extracted_features(source, split[1], device=device, max_length=max_length)
    assert train is not None
    return solve_head(CachedHead(model), train, val, device=device)


def starts_solved(
    options: FitOptions, plan: Plan, inputs: Inputs, parallel: Parallel | None
) -> bool:
    """Whether the head-only phase before fine-tuning (``--head-epochs``: linear probing,
    then fine-tuning) is a solved head instead: a pretrained backbone, features that can
    be cached, one process, ``--solve-head``.  (Starting every fine-tuning from a solved
    head did not pay on digits 5-9: full +0.1, partial:2 -0.8 points over 2 seeds.)"""
    return (
        options.solve_head
        and options.feature_cache
        and plan.head_epochs > 0
        and bool(plan.trainable_stages)
        and not plan.reinitialise
        and inputs.why_no_feature_cache is None
        and parallel is None
    )


def solves_head(
    options: FitOptions,
    plan: Plan,
    loaders: Loaders,
    inputs: Inputs,
    parallel: Parallel | None,
    train_data: LabeledData,
) -> bool:
    """Whether the head is solved on the frozen backbone's features instead of trained by
    the loop (``--solve-head``, the default): a backbone frozen whole, and its features
    cached un-augmented (images) or a model whose features are not cached (texts: they are
    extracted once in memory).  ``--no-feature-cache`` on images asks for the loop."""
    if not options.solve_head or plan.trainable_stages or plan.lora is not None:
        return False
    if len(np.unique(train_data.targets[train_data.targets >= 0])) < 2:
        return False  # a fold of one class: nothing to solve, the loop trains it as given
    if loaders.cached:
        return isinstance(loaders.model, CachedHead) and not loaders.feature_cache.get("views", 0)
    return inputs.why_no_feature_cache is not None and parallel is None


def solver_record(solution: HeadSolution | None, *, start: bool) -> dict[str, Any] | None:
    """``headstart.json``'s record of a solved head: the head itself (``linear``), or the
    head fine-tuning started from (``start``: linear probing, then fine-tuning)."""
    if solution is None:
        return None
    return {
        "role": "fine-tuning started from it (LP-FT)" if start else "the trained head",
        "method": "L-BFGS, multinomial logistic loss, L2 by cross-validation",
        "c": solution.c,
        "cs": list(solution.cs),
        "cv_accuracy": list(solution.cv_accuracy),
        "cv_log_loss": list(solution.cv_log_loss),
        "folds": solution.folds,
        "converged": solution.converged,
        "seconds": solution.seconds,
        "describe": solution.describe(),
    }

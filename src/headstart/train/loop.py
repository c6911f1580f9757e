"""The training loop: AdamW, cosine schedule with warm-up, best-epoch selection.

One loop that reads top to bottom (nanoGPT's ``train.py`` is the model): each epoch
trains over the loader, evaluates on the validation set, records a row of metrics and
keeps the best weights.  Freezing is the plan's business (:mod:`headstart.plan.apply`);
this module only trains what the optimizer was given.

Where the loop is lives in one :class:`headstart.train.state.TrainState`, which a
checkpoint saves and restores whole.  A run of one process goes through
:class:`headstart.train.parallel.SingleProcess`, so the step is the same with or without
a data-parallel group.  What a step minimises (and with which optimizer and schedule) is
an :class:`Objective`: cross-entropy for ``fit``, adapt's losses for ``adapt``.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from headstart._progress import Bar, bar, open_bar
from headstart.config.strategies import check_head_epochs, parse_strategy
from headstart.config.train import TrainConfig
from headstart.data.sampling import EpochBatchSampler
from headstart.errors import ConfigError, TrainingError
from headstart.plan.apply import apply_plan, set_train_mode
from headstart.plan.make import Plan, head_phase
from headstart.sources.target import TargetModel
from headstart.train.checkpoint import Checkpointer, kill_point
from headstart.train.parallel import Group, Parallel, SingleProcess
from headstart.train.state import TrainState

log = logging.getLogger(__name__)


# Evaluation needs no gradients: bigger batches cost little memory and save overhead.
EVAL_BATCH = 128
# An epoch's training loss this many times the first epoch's: warn that the rate is high.
GROWTH_WARNING = 4.0


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float | None
    val_acc: float | None
    val_f1: float | None
    lr_head: float
    lr_backbone: float
    seconds: float


@dataclass
class History:
    epochs: list[EpochMetrics] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False

    def best(self) -> EpochMetrics:
        return self.epochs[self.best_epoch - 1]

    def rows(self) -> list[dict[str, Any]]:
        return [asdict(e) for e in self.epochs]


@dataclass
class Predictions:
    targets: np.ndarray
    probs: np.ndarray  # [N, C]
    loss: float

    @property
    def preds(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def accuracy(self) -> float:
        return float((self.preds == self.targets).mean()) if len(self.targets) else float("nan")

    @property
    def macro_f1(self) -> float:
        from sklearn.metrics import f1_score

        return float(f1_score(self.targets, self.preds, average="macro", zero_division=0))


def _lr_lambda(total_steps: int, warmup_steps: int) -> Any:
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def _schedule(config: TrainConfig, steps_per_epoch: int, head_epochs: int) -> Any:
    """The learning-rate multiplier per step: warm-up then cosine decay over the run, or,
    with ``head_epochs``, over the head-only epochs and again over the rest (two cycles,
    as fastai's ``fine_tune`` runs one cycle frozen and one unfrozen)."""

    def cycle(steps: int) -> Any:
        return _lr_lambda(steps, min(int(config.warmup_epochs * steps_per_epoch), steps // 2))

    total = config.epochs * steps_per_epoch
    if not head_epochs:
        return cycle(total)
    split = head_epochs * steps_per_epoch
    first, second = cycle(split), cycle(total - split)
    return lambda step: first(step) if step < split else second(step - split)


@torch.no_grad()
def predict_loader(
    model: nn.Module, loader: Iterable[Any], device: torch.device, *, progress: bool = False
) -> Predictions:
    """Run ``model`` over ``loader`` in eval mode; targets of -1 are not scored in the loss."""
    model.eval()
    probs, targets, total_loss, n = [], [], 0.0, 0
    for x, y in bar(loader, desc="predict", enabled=progress):
        logits = model(x.to(device))
        y = y.to(device)
        scored = y >= 0
        if scored.any():
            total_loss += float(
                nn.functional.cross_entropy(logits[scored], y[scored], reduction="sum")
            )
            n += int(scored.sum())
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
        targets.append(y.cpu())
    if not probs:
        return Predictions(np.zeros(0, dtype=np.int64), np.zeros((0, 0)), float("nan"))
    return Predictions(
        targets=torch.cat(targets).numpy(),
        probs=torch.cat(probs).numpy(),
        loss=total_loss / n if n else float("nan"),
    )


def _better(new: EpochMetrics, old: EpochMetrics | None) -> bool:
    if old is None or old.val_acc is None or new.val_acc is None:
        return True
    if new.val_acc != old.val_acc:
        return new.val_acc > old.val_acc
    return (new.val_loss or 0.0) < (old.val_loss or 0.0)


@dataclass
class StepLoss:
    """One step of an :class:`Objective`: what is back-propagated, the label head's
    logits (for accuracy) and the batch's summed classification loss (the epoch's
    ``train_loss``)."""

    loss: torch.Tensor
    logits: torch.Tensor
    loss_sum: float


class Objective:
    """What training minimises and how: cross-entropy on the labels, AdamW, warm-up and
    cosine decay.  ``fit`` trains this; ``adapt`` supplies a subclass (its losses, its
    schedule) to the same loop."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def optimizer(self, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(groups, **_adamw_kernel(groups))

    def schedule(
        self, config: TrainConfig, steps_per_epoch: int, head_epochs: int
    ) -> Callable[[int], float]:
        """The learning-rate multiplier per optimizer step."""
        return _schedule(config, steps_per_epoch, head_epochs)

    def start_epoch(self, epoch: int) -> None:
        """Called as an epoch begins, the model already in training mode."""

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, group: Group, global_n: int,
        step: int,
    ) -> StepLoss:  # fmt: skip
        """The loss of one batch; ``global_n``: the global batch's size over all processes,
        ``step``: optimizer steps done before this one."""
        logits = model(x)
        loss, loss_sum = group.batch_loss(self.loss_fn, logits, y, global_n)
        return StepLoss(loss, logits, loss_sum)

    def end_epoch(self, row: EpochMetrics) -> None:
        """Called with each epoch's metrics once measured: says them in the log (DEBUG:
        the command line shows them with -v; the bar counts the epochs)."""
        log.debug(_format_row(row))


@dataclass
class _Fit:
    """What the epochs of one fit share and do not change."""

    plan: Plan
    config: TrainConfig
    train_loader: DataLoader[Any]
    val_loader: DataLoader[Any] | None
    device: torch.device
    group: Group
    forward: nn.Module  # the model as the group runs it (DistributedDataParallel or itself)
    objective: Objective
    checkpointer: Checkpointer | None
    on_epoch: Callable[[EpochMetrics], None] | None
    backbone_trainable: list[nn.Parameter]  # frozen during the head-only epochs
    bar: Bar = field(default_factory=Bar)  # over the fit's steps: one bar, not one an epoch


def train(
    model: TargetModel,
    plan: Plan,
    train_loader: DataLoader[Any],
    val_loader: DataLoader[Any] | None,
    config: TrainConfig,
    *,
    device: torch.device,
    checkpointer: Checkpointer | None = None,
    parallel: Parallel | None = None,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    objective: Objective | None = None,
) -> History:
    """Train ``model`` by ``plan``; on return it holds the selected (best or last) weights.

    With a ``checkpointer``, training starts from its latest checkpoint when there is one
    (mid-epoch too: the epoch's order and augmentation replay, the batches already done
    are skipped) and saves one at the end of every epoch and every ``checkpointer.every``
    steps.  ``parallel``: this process's part of a data-parallel run.  ``on_epoch`` is
    called with each epoch's metrics as soon as they are measured (experiment tracking
    logs them live).  ``objective``: what to minimise (default: cross-entropy, as ``fit``).
    """
    group: Group = parallel if parallel is not None else SingleProcess(device)
    objective = objective if objective is not None else Objective(config.label_smoothing)
    check_head_epochs(parse_strategy(plan.strategy)[0], plan.head_epochs, config.epochs)
    if plan.head_epochs and group.world > 1:
        raise ConfigError("--head-epochs with --processes > 1 is not supported; use one process")
    model.to(device)
    groups = apply_plan(model, plan)
    optimizer = objective.optimizer(groups)
    steps_per_epoch = max(1, len(train_loader))
    schedule = objective.schedule(config, steps_per_epoch, plan.head_epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    if checkpointer is not None and not isinstance(train_loader.batch_sampler, EpochBatchSampler):
        raise TypeError("checkpointed training needs a loader batched by EpochBatchSampler")
    run = _Fit(
        plan, config, train_loader, val_loader, device, group, group.wrap(model), objective,
        checkpointer, on_epoch, [p for p in model.backbone.parameters() if p.requires_grad],
    )  # fmt: skip
    state = TrainState(model, optimizer, scheduler, train_loader.generator)
    saved = checkpointer.load() if checkpointer is not None else None
    if saved is not None:
        state.restore(saved, group)
        p = state.progress
        log.info(
            "resumed from %s: epoch %d, %d of %d steps done",
            *(saved.path, p.epoch, p.step_in_epoch, steps_per_epoch),
        )
    run.bar = open_bar(
        config.epochs * steps_per_epoch, "fit", enabled=config.progress,
        initial=state.progress.global_step, unit="step",
    )  # fmt: skip
    with run.bar:
        while state.progress.epoch <= config.epochs and not state.progress.stopped_early:
            _epoch(run, state)
    for w in run.backbone_trainable:
        w.requires_grad_(True)
    if state.best is not None:
        model.load_state_dict(state.best)
    model.eval()
    p = state.progress
    epochs = [EpochMetrics(**r) for r in p.rows]
    return History(epochs=epochs, best_epoch=p.best_epoch, stopped_early=p.stopped_early)


def _epoch(run: _Fit, state: TrainState) -> None:
    """Train one epoch (the rest of it, after a resume), measure it, select, save."""
    p, plan = state.progress, run.plan
    t0 = time.perf_counter() - p.seconds
    head_only = p.epoch <= plan.head_epochs
    for w in run.backbone_trainable:  # no gradient, so AdamW leaves them (and their decay) be
        w.requires_grad_(not head_only)
    if p.step_in_epoch == 0:  # the rates this epoch starts with (a resume keeps them)
        lrs = {g["name"].removesuffix("_no_decay"): g for g in state.optimizer.param_groups}
        p.lr_head = float(lrs["head"]["lr"])
        p.lr_backbone = float(lrs["backbone"]["lr"]) if "backbone" in lrs and not head_only else 0.0
    set_train_mode(state.model, head_phase(plan) if head_only else plan, True)
    run.objective.start_epoch(p.epoch)
    _train_steps(run, state, t0)
    loss_sum, correct, seen = run.group.sum_over_processes(p.loss_sum, p.correct, p.seen)
    val = predict_loader(state.model, run.val_loader, run.device) if run.val_loader else None
    row = EpochMetrics(
        epoch=p.epoch,
        train_loss=loss_sum / max(1, seen),
        train_acc=correct / max(1, seen),
        val_loss=val.loss if val else None,
        val_acc=val.accuracy if val else None,
        val_f1=val.macro_f1 if val else None,
        lr_head=p.lr_head,
        lr_backbone=p.lr_backbone,
        seconds=time.perf_counter() - t0,
    )
    _warn_if_growing(state, row)
    p.rows.append(asdict(row))
    run.objective.end_epoch(row)
    if run.on_epoch is not None:
        run.on_epoch(row)
    _select(run.config, state, row, validated=val is not None)
    # Not after the last epoch: the run dir is written next, and a fit stopped before
    # it is whole resumes from the previous checkpoint and replays this epoch bit for
    # bit (tests/test_faults.py); the save would cost ~0.4 s of a resnet18 fit, and
    # be deleted a second later.
    last = p.stopped_early or p.epoch == run.config.epochs
    _check_weights(state)  # no checkpoint (and no run dir) holds weights that are not finite
    p.next_epoch()
    if run.checkpointer is not None and not last:
        state.save(run.checkpointer, run.group)


def _train_steps(run: _Fit, state: TrainState, t0: float) -> None:
    """The epoch's optimizer steps, from the first not yet done; a checkpoint every
    ``checkpointer.every`` steps (the end of the epoch is saved after validation)."""
    p, loader = state.progress, run.train_loader
    sampler = loader.batch_sampler
    if isinstance(sampler, EpochBatchSampler):
        sampler.set_epoch(p.epoch, skip=p.step_in_epoch)
    state.epoch_start_loader = loader.generator.get_state() if loader.generator else None
    for x, y in loader:
        x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
        global_n = run.group.global_batch(sampler, p.step_in_epoch, len(y))
        out = run.objective.loss(
            run.forward, x, y, group=run.group, global_n=global_n, step=p.global_step
        )
        _check_finite(run, state, out.loss_sum)
        state.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        state.optimizer.step()
        state.scheduler.step()
        p.step_in_epoch, p.global_step = p.step_in_epoch + 1, p.global_step + 1
        p.loss_sum += out.loss_sum
        p.correct += int((out.logits.argmax(1) == y).sum())
        p.seen += len(y)
        run.bar.update(1)
        run.bar.set_postfix_str(
            f"epoch {p.epoch}/{run.config.epochs} loss {p.loss_sum / p.seen:.4f}"
        )
        kill_point(f"step:{p.global_step}")
        ck = run.checkpointer
        if ck is not None and ck.due(p.global_step) and p.step_in_epoch < len(loader):
            p.seconds = time.perf_counter() - t0
            state.save(ck, run.group)


def _check_finite(run: _Fit, state: TrainState, loss_sum: float) -> None:
    """Stop before a step on a loss that is not a finite number: the weights would be
    ruined by it, and every later step with them (the last checkpoint stays as it was)."""
    bad = not math.isfinite(loss_sum)
    if run.group.world > 1:  # every process stops together, or the others would hang
        bad = run.group.sum_over_processes(float(bad))[0] > 0
    if bad:
        p = state.progress
        lrs = sorted({float(g["lr"]) for g in state.optimizer.param_groups}, reverse=True)
        raise TrainingError(
            f"training diverged: the loss is not a finite number at epoch {p.epoch}, step "
            f"{p.step_in_epoch + 1} (learning rate {lrs[0]:.3g}); nothing was written from "
            "it. Try a lower --lr (or --lr auto), or --precision fp32"
        )


def _check_weights(state: TrainState) -> None:
    if all(bool(torch.isfinite(w).all()) for w in state.model.parameters()):
        return
    raise TrainingError(
        f"training diverged: weights that are not finite numbers after epoch "
        f"{state.progress.epoch}; nothing was written from them. Try a lower --lr (or --lr "
        "auto), or --precision fp32"
    )


def _warn_if_growing(state: TrainState, row: EpochMetrics) -> None:
    """A training loss far above the first epoch's says the rate is too high (said once,
    as the loss first crosses the line)."""
    rows = state.progress.rows
    first = rows[0]["train_loss"] if rows else None
    if not first or row.train_loss <= GROWTH_WARNING * first:
        return
    if rows[-1]["train_loss"] <= GROWTH_WARNING * first:
        log.warning(
            "the training loss grew from %.3g (epoch 1) to %.3g (epoch %d): the learning "
            "rate may be too high; try a lower --lr (or --lr auto)",
            first,
            row.train_loss,
            row.epoch,
        )


def _select(config: TrainConfig, state: TrainState, row: EpochMetrics, *, validated: bool) -> None:
    """Keep this epoch's weights if they are the best so far (or the last are kept);
    count the epochs without improvement and stop early after ``config.patience``."""
    p = state.progress
    best = EpochMetrics(**p.rows[p.best_epoch - 1]) if p.best_epoch else None
    if config.select == "last" or not validated or _better(row, best):
        p.best_epoch, p.since_best = row.epoch, 0
        state.best = copy.deepcopy(state.model.state_dict())
    else:
        p.since_best += 1
        if config.patience is not None and p.since_best >= config.patience:
            p.stopped_early = True
            log.info("early stop: no better validation accuracy for %d epochs", p.since_best)


def _adamw_kernel(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """torch's fused AdamW where it runs (floating-point parameters on the CPU or a CUDA
    GPU): the same update as the default loop over parameters, in one kernel; on the CPU
    it cost a resnet18 step ~10x less CPU time (bench/RESULTS.md, "Full fine-tuning")."""
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(
        p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params
    )
    return {"fused": True} if fused else {}


def _format_row(r: EpochMetrics) -> str:
    text = f"epoch {r.epoch:3d}  train loss {r.train_loss:.4f} acc {r.train_acc:.3f}"
    if r.val_acc is not None:
        text += f"  val loss {r.val_loss:.4f} acc {r.val_acc:.3f} f1 {r.val_f1:.3f}"
    return text + f"  ({r.seconds:.1f}s)"

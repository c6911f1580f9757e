"""The training loop: AdamW, cosine schedule with warm-up, best-epoch selection.

One loop that reads top to bottom (nanoGPT's ``train.py`` is the model): each epoch
trains over the loader, evaluates on the validation set, records a row of metrics and
keeps the best weights.  Freezing is the plan's business (:mod:`headstart.plan.apply`);
this module only trains what the optimizer was given.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from headstart.config.train import TrainConfig
from headstart.data.sampling import EpochBatchSampler
from headstart.errors import ConfigError
from headstart.plan.apply import apply_plan, set_train_mode
from headstart.plan.make import Plan, check_head_epochs, head_phase, parse_strategy
from headstart.sources.target import TargetModel
from headstart.train.checkpoint import (
    Checkpointer,
    CheckpointError,
    Loaded,
    Progress,
    get_rng_states,
    kill_point,
    set_rng_states,
)
from headstart.train.parallel import Parallel

log = logging.getLogger(__name__)


# Evaluation needs no gradients: bigger batches cost little memory and save overhead.
EVAL_BATCH = 128


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
    for x, y in tqdm(loader, desc="predict", leave=False, disable=not progress):
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
) -> History:
    """Train ``model`` by ``plan``; on return it holds the selected (best or last) weights.

    With a ``checkpointer``, training starts from its latest checkpoint when there is one
    (mid-epoch too: the epoch's order and augmentation replay, the batches already done
    are skipped) and saves one at the end of every epoch and every ``checkpointer.every``
    steps.  ``parallel``: this process's part of a data-parallel run.  ``on_epoch`` is
    called with each epoch's metrics as soon as they are measured (experiment tracking
    logs them live).
    """
    check_head_epochs(parse_strategy(plan.strategy)[0], plan.head_epochs, config.epochs)
    if plan.head_epochs and parallel is not None:
        raise ConfigError("--head-epochs with --processes > 1 is not supported; use one process")
    model.to(device)
    groups = apply_plan(model, plan)
    # what the plan trains in the backbone: frozen during the head-only epochs
    backbone_trainable = [p for p in model.backbone.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(groups, **_adamw_kernel(groups))
    steps_per_epoch = max(1, len(train_loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _schedule(config, steps_per_epoch, plan.head_epochs)
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    sampler = train_loader.batch_sampler
    if checkpointer is not None and not isinstance(sampler, EpochBatchSampler):
        raise TypeError("checkpointed training needs a loader batched by EpochBatchSampler")
    forward: nn.Module = model if parallel is None else parallel.wrap(model)

    progress = Progress()
    best_state: dict[str, torch.Tensor] | None = None
    saved = checkpointer.load() if checkpointer is not None else None
    if saved is not None:
        best_state = _restore(saved, model, optimizer, scheduler, train_loader, parallel)
        progress = saved.progress
        log.info(
            "resumed from %s: epoch %d, %d of %d steps done",
            saved.path,
            progress.epoch,
            progress.step_in_epoch,
            steps_per_epoch,
        )
    # After a restore: loading the optimizer's state replaces its param_group dicts.
    lrs = {g["name"].removesuffix("_no_decay"): g for g in optimizer.param_groups}
    history = History(
        epochs=[EpochMetrics(**r) for r in progress.rows],
        best_epoch=progress.best_epoch,
        stopped_early=progress.stopped_early,
    )
    best: EpochMetrics | None = history.best() if history.best_epoch else None
    since_best = progress.since_best
    global_step = progress.global_step
    for epoch in range(progress.epoch, config.epochs + 1):
        if progress.finished:
            break
        t0 = time.perf_counter() - progress.seconds
        head_only = epoch <= plan.head_epochs
        for p in backbone_trainable:  # no gradient, so AdamW leaves them (and their decay) be
            p.requires_grad_(not head_only)
        if progress.step_in_epoch == 0:
            progress.lr_head = float(lrs["head"]["lr"])
            progress.lr_backbone = (
                float(lrs["backbone"]["lr"]) if "backbone" in lrs and not head_only else 0.0
            )
        lr_head, lr_backbone = progress.lr_head, progress.lr_backbone
        set_train_mode(model, head_phase(plan) if head_only else plan, True)
        loss_sum, correct, seen = progress.loss_sum, progress.correct, progress.seen
        step = progress.step_in_epoch
        if isinstance(sampler, EpochBatchSampler):
            sampler.set_epoch(epoch, skip=step)
        loader_state = train_loader.generator.get_state() if train_loader.generator else None
        bar = tqdm(
            train_loader,
            desc=f"epoch {epoch}/{config.epochs}",
            leave=False,
            disable=not config.progress,
            initial=step,
        )
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = forward(x)
            if parallel is None:
                loss = loss_fn(logits, y)
            else:  # this process's share of the mean over the whole global batch
                assert isinstance(sampler, EpochBatchSampler)
                loss = parallel.share_of_mean(loss_fn, logits, y, sampler.global_size(step))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step, global_step = step + 1, global_step + 1
            if parallel is None:
                loss_sum += loss.item() * len(y)
            else:
                loss_sum += float(parallel.local_loss_sum(loss_fn, logits.detach(), y))
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
            kill_point(f"step:{global_step}")
            # The end of an epoch is saved below, after validation.
            if checkpointer and checkpointer.due(global_step) and step < steps_per_epoch:
                progress = replace(
                    progress,
                    epoch=epoch,
                    step_in_epoch=step,
                    global_step=global_step,
                    loss_sum=loss_sum,
                    correct=correct,
                    seen=seen,
                    seconds=time.perf_counter() - t0,
                    rows=history.rows(),
                    best_epoch=history.best_epoch,
                    since_best=since_best,
                    best_is_model=False,
                )
                _save(
                    checkpointer,
                    progress,
                    model,
                    best_state,
                    optimizer,
                    scheduler,
                    train_loader.generator,
                    loader_state,
                    parallel,
                )
        if parallel is not None:
            loss_sum, correct, seen = parallel.sum_over_processes(loss_sum, correct, seen)
        val = predict_loader(model, val_loader, device) if val_loader is not None else None
        row = EpochMetrics(
            epoch=epoch,
            train_loss=loss_sum / max(1, seen),
            train_acc=correct / max(1, seen),
            val_loss=val.loss if val else None,
            val_acc=val.accuracy if val else None,
            val_f1=val.macro_f1 if val else None,
            lr_head=lr_head,
            lr_backbone=lr_backbone,
            seconds=time.perf_counter() - t0,
        )
        history.epochs.append(row)
        log.info(_format_row(row))
        if on_epoch is not None:
            on_epoch(row)
        if config.select == "last" or val is None or _better(row, best):
            best, history.best_epoch, since_best = row, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            since_best += 1
            if config.patience is not None and since_best >= config.patience:
                history.stopped_early = True
                log.info("early stop: no better validation accuracy for %d epochs", since_best)
        # Not after the last epoch: the run dir is written next, and a fit stopped before
        # it is whole resumes from the previous checkpoint and replays this epoch bit for
        # bit (tests/test_faults.py); the save would cost ~0.4 s of a resnet18 fit, and
        # be deleted a second later.
        last = history.stopped_early or epoch == config.epochs
        if checkpointer is not None and not last:
            progress = Progress(
                epoch=epoch + 1,
                global_step=global_step,
                rows=history.rows(),
                best_epoch=history.best_epoch,
                since_best=since_best,
                stopped_early=history.stopped_early,
                finished=history.stopped_early or epoch == config.epochs,
                best_is_model=history.best_epoch == epoch,
            )
            _save(
                checkpointer,
                progress,
                model,
                best_state,
                optimizer,
                scheduler,
                train_loader.generator,
                None,
                parallel,
            )
        progress = Progress()
        if history.stopped_early:
            break
    for p in backbone_trainable:
        p.requires_grad_(True)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history


def _adamw_kernel(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """torch's fused AdamW where it runs (floating-point parameters on the CPU or a CUDA
    GPU): the same update as the default loop over parameters, in one kernel; on the CPU
    it cost a resnet18 step ~10x less CPU time (bench/RESULTS.md, "Full fine-tuning")."""
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(
        p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params
    )
    return {"fused": True} if fused else {}


def _save(
    checkpointer: Checkpointer,
    progress: Progress,
    model: nn.Module,
    best_state: dict[str, torch.Tensor] | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator | None,
    epoch_start_generator: torch.Tensor | None,
    parallel: Parallel | None,
) -> None:
    rng = get_rng_states(generator)
    if epoch_start_generator is not None:
        # Mid-epoch: a resumed run starts this epoch's loader again from where it began.
        rng["loader"] = epoch_start_generator
    if parallel is not None:  # every process's generators (dropout differs per process)
        rng = {"processes": parallel.gather(rng)}
    checkpointer.save(
        progress,
        model=model.state_dict(),
        best=None if progress.best_is_model else best_state,
        # No mixed precision (and so no gradient scaler) in this loop yet.
        optimizer={"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
        rng=rng,
    )
    kill_point(f"saved:{progress.global_step}")


def _restore(
    saved: Loaded,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: DataLoader[Any],
    parallel: Parallel | None,
) -> dict[str, torch.Tensor] | None:
    """Put a checkpoint's state back; return the best weights so far."""
    try:
        model.load_state_dict(saved.model, strict=True)
        optimizer.load_state_dict(saved.optimizer["optimizer"])
        scheduler.load_state_dict(saved.optimizer["scheduler"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"{saved.path}: does not match this model or plan ({str(exc).splitlines()[0]})"
        ) from exc
    rng = saved.rng
    if "processes" in rng:
        states = rng["processes"]
        rank = parallel.rank if parallel is not None else 0
        rng = states[rank] if rank < len(states) else states[0]
    set_rng_states(rng, loader.generator)
    p = saved.progress
    if saved.best is not None:
        return saved.best
    if p.best_epoch and p.best_is_model:
        return copy.deepcopy(model.state_dict())
    return None


def _format_row(r: EpochMetrics) -> str:
    text = f"epoch {r.epoch:3d}  train loss {r.train_loss:.4f} acc {r.train_acc:.3f}"
    if r.val_acc is not None:
        text += f"  val loss {r.val_loss:.4f} acc {r.val_acc:.3f} f1 {r.val_f1:.3f}"
    return text + f"  ({r.seconds:.1f}s)"

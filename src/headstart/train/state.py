"""The state of a fit in progress: what the loop updates and a checkpoint holds whole.

:class:`TrainState` gathers everything a resumed fit needs to go on as if it had never
stopped: the weights, the optimizer and scheduler, the best weights so far, where the
loop is (:class:`headstart.train.checkpoint.Progress`: epoch, step, metrics, selection,
early stopping) and every random generator a step draws from, the loader's included.
:meth:`TrainState.save` writes it as one checkpoint, :meth:`TrainState.restore` puts a
checkpoint back into it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from headstart.train.checkpoint import (
    Checkpointer,
    CheckpointError,
    Loaded,
    Progress,
    get_rng_states,
    kill_point,
    set_rng_states,
)
from headstart.train.parallel import Group


@dataclass
class TrainState:
    """A fit in progress.  ``generator`` is the training loader's (its batches' order
    and augmentation); ``epoch_start_loader`` its state as the epoch in progress began."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator | None
    progress: Progress = field(default_factory=Progress)
    best: dict[str, torch.Tensor] | None = None  # the best epoch's weights so far
    epoch_start_loader: torch.Tensor | None = None

    def save(self, checkpointer: Checkpointer, group: Group) -> None:
        """Write the whole state as a checkpoint (only the main process writes)."""
        p = self.progress
        # Between epochs the best weights are often the current ones: not saved twice.
        p.best_is_model = p.step_in_epoch == 0 and p.best_epoch == p.epoch - 1
        rng = get_rng_states(self.generator)
        if p.step_in_epoch and self.epoch_start_loader is not None:
            # Mid-epoch: a resumed run starts this epoch's loader again from where it began.
            rng["loader"] = self.epoch_start_loader
        checkpointer.save(
            p,
            model=self.model.state_dict(),
            best=None if p.best_is_model else self.best,
            # No mixed precision (and so no gradient scaler) in this loop yet.
            optimizer={
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
            },
            # every process's generators (dropout differs per process)
            rng={"processes": group.gather(rng)},
        )
        kill_point(f"saved:{p.global_step}")

    def restore(self, saved: Loaded, group: Group) -> None:
        """Put a checkpoint back: weights, optimizer, scheduler, generators, progress."""
        try:
            self.model.load_state_dict(saved.model, strict=True)
            self.optimizer.load_state_dict(saved.optimizer["optimizer"])
            self.scheduler.load_state_dict(saved.optimizer["scheduler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(
                f"{saved.path}: does not match this model or plan ({str(exc).splitlines()[0]})"
            ) from exc
        set_rng_states(_this_process(saved.rng, group.rank), self.generator)
        self.progress = saved.progress
        self.best = saved.best
        if self.best is None and self.progress.best_epoch and self.progress.best_is_model:
            self.best = copy.deepcopy(self.model.state_dict())


def _this_process(rng: dict[str, Any], rank: int) -> dict[str, Any]:
    """This process's generators from a checkpoint's: its own when the checkpoint has
    them (the same number of processes), else the first process's."""
    if "processes" not in rng:  # a checkpoint written before every one held a list
        return rng
    states: list[dict[str, Any]] = rng["processes"]
    return states[rank] if rank < len(states) else states[0]

"""Data-parallel training with Hugging Face Accelerate: ``fit --processes N``.

Why Accelerate: headstart's text sources already stand on the Hugging Face stack
(transformers, peft), and Accelerate is that stack's engine.  It wraps plain PyTorch
(our own loop stays as it is: the model goes into DistributedDataParallel, the rest is a
few collective calls), picks gloo on CPU and NCCL on GPUs from the environment, and its
``accelerate launch`` (like ``torchrun`` or SLURM's ``srun``) starts the same command on
many machines: a process started that way finds ``WORLD_SIZE`` etc. in its environment
and joins the group instead of launching its own.

How a global batch is shared: every process walks the same epoch order
(:class:`headstart.data.sampling.EpochBatchSampler`) and takes its slice of each global
batch of ``--batch-size``; each computes ``world / global_count * sum(losses)`` over its
slice, so DDP's average of gradients is exactly the gradient of the mean loss over the
whole global batch, as a single process would compute it.  BatchNorm statistics are
per process (as in any DDP run without SyncBatchNorm).
"""

from __future__ import annotations

import logging
import os
from typing import Any, TypeAlias

import torch
from torch import nn

from headstart.config.options import FitOptions
from headstart.data.sampling import EpochBatchSampler
from headstart.errors import ConfigError
from headstart.runtime import resolve_device

log = logging.getLogger(__name__)


def in_launched_group() -> bool:
    """Whether this process was started as one of several (by us, accelerate, torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def group_size(options: FitOptions) -> int:
    """The processes a fit's options ask for over all machines: ``--processes`` x
    ``--nodes``."""
    return options.processes * options.nodes


class Parallel:
    """This process's place in a data-parallel run, and the few collectives training uses."""

    def __init__(self, accelerator: Any) -> None:
        self.accelerator = accelerator
        self.rank = int(accelerator.process_index)
        self.world = int(accelerator.num_processes)
        self.device = accelerator.device
        self.is_main = bool(accelerator.is_main_process)

    @classmethod
    def from_environment(cls, options: FitOptions) -> Parallel:
        from accelerate import Accelerator

        cpu = resolve_device(options.device).type == "cpu"
        if cpu and os.environ.get("OMP_NUM_THREADS", "").isdigit():
            torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        return cls(Accelerator(cpu=cpu))

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.world:
            raise ConfigError(
                f"--batch-size {batch_size} is the global batch: it must be divisible by "
                f"--processes {self.world}"
                if self.world == int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
                else f"the group's {self.world} processes (--processes x --nodes)"
            )

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model in DistributedDataParallel (which averages gradients in backward)."""
        return self.accelerator.prepare_model(model)

    def global_batch(self, sampler: Any, step: int, local_n: int) -> int:
        """How many samples the epoch's ``step``-th global batch holds, over all processes."""
        if not isinstance(sampler, EpochBatchSampler):
            raise TypeError("data-parallel training needs a loader batched by EpochBatchSampler")
        return sampler.global_size(step)

    def batch_loss(
        self, loss_fn: nn.CrossEntropyLoss, logits: torch.Tensor, y: torch.Tensor, global_n: int
    ) -> tuple[torch.Tensor, float]:
        """The loss to back-propagate, whose gradient averaged over processes is the global
        batch's mean's, and this process's summed loss over its slice (for the epoch's
        record)."""
        local = nn.functional.cross_entropy(
            logits, y, label_smoothing=loss_fn.label_smoothing, reduction="sum"
        )
        return local * (self.world / global_n), float(local.detach())

    def sum_over_processes(self, *values: float) -> list[Any]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        total = self.accelerator.reduce(t, reduction="sum").cpu().tolist()
        return [type(v)(s) if isinstance(v, int) else s for v, s in zip(values, total, strict=True)]

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def gather(self, obj: Any) -> list[Any]:
        from accelerate.utils import gather_object

        return list(gather_object([obj]))


class SingleProcess:
    """A run of one process: :class:`Parallel`'s interface with nothing to share (rank 0
    of 1, the model as it is, no-op collectives), so that the loop has one path."""

    rank = 0
    world = 1
    is_main = True

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def check_batch(self, batch_size: int) -> None:
        """Any batch size divides among one process."""

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def global_batch(self, sampler: Any, step: int, local_n: int) -> int:
        return local_n

    def batch_loss(
        self, loss_fn: nn.CrossEntropyLoss, logits: torch.Tensor, y: torch.Tensor, global_n: int
    ) -> tuple[torch.Tensor, float]:
        """The batch's mean loss (this batch is the global batch) and its sum."""
        loss: torch.Tensor = loss_fn(logits, y)
        return loss, loss.item() * len(y)

    def sum_over_processes(self, *values: float) -> list[Any]:
        return list(values)

    def barrier(self) -> None:
        """Nobody to wait for."""

    def gather(self, obj: Any) -> list[Any]:
        return [obj]


# What training runs in: a group of processes, or one process on its own.
Group: TypeAlias = Parallel | SingleProcess

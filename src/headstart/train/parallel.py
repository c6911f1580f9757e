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
from typing import Any

import torch
from torch import nn

from headstart.config.options import FitOptions
from headstart.errors import ConfigError
from headstart.runtime import resolve_device

log = logging.getLogger(__name__)


def in_launched_group() -> bool:
    """Whether this process was started as one of several (by us, accelerate, torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


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
            )

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model in DistributedDataParallel (which averages gradients in backward)."""
        return self.accelerator.prepare_model(model)

    @staticmethod
    def local_loss_sum(loss_fn: nn.CrossEntropyLoss, logits: torch.Tensor, y: torch.Tensor) -> Any:
        return nn.functional.cross_entropy(
            logits, y, label_smoothing=loss_fn.label_smoothing, reduction="sum"
        )

    def share_of_mean(
        self, loss_fn: nn.CrossEntropyLoss, logits: torch.Tensor, y: torch.Tensor, global_n: int
    ) -> torch.Tensor:
        """The loss whose gradient, averaged over processes, is the global batch's mean's."""
        return self.local_loss_sum(loss_fn, logits, y) * (self.world / global_n)

    def sum_over_processes(self, *values: float) -> list[Any]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        total = self.accelerator.reduce(t, reduction="sum").cpu().tolist()
        return [type(v)(s) if isinstance(v, int) else s for v, s in zip(values, total, strict=True)]

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def gather(self, obj: Any) -> list[Any]:
        from accelerate.utils import gather_object

        return list(gather_object([obj]))

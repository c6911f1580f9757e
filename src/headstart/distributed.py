"""Data-parallel training with Hugging Face Accelerate: ``fit --processes N``.

Why Accelerate: headstart's text sources already stand on the Hugging Face stack
(transformers, peft), and Accelerate is that stack's engine.  It wraps plain PyTorch
(our own loop stays as it is: the model goes into DistributedDataParallel, the rest is a
few collective calls), picks gloo on CPU and NCCL on GPUs from the environment, and its
``accelerate launch`` (like ``torchrun`` or SLURM's ``srun``) starts the same command on
many machines: a process started that way finds ``WORLD_SIZE`` etc. in its environment
and joins the group instead of launching its own.

How a global batch is shared: every process walks the same epoch order
(:class:`headstart.determinism.EpochBatchSampler`) and takes its slice of each global
batch of ``--batch-size``; each computes ``world / global_count * sum(losses)`` over its
slice, so DDP's average of gradients is exactly the gradient of the mean loss over the
whole global batch, as a single process would compute it.  BatchNorm statistics are
per process (as in any DDP run without SyncBatchNorm).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from headstart.errors import ConfigError, HeadstartError

if TYPE_CHECKING:
    from headstart.api import FitResult
    from headstart.options import FitOptions

__all__ = ["Parallel", "in_launched_group", "launch"]

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

        from headstart.train import resolve_device

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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(
    rank: int,
    fn: Callable[..., Any],
    options: FitOptions,
    kind: str,
    world: int,
    port: int,
    level: int,
    errors: Any,
) -> None:
    # The processes share the machine's cores instead of each taking them all.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // world)))
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": str(world),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world),
        }
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("headstart")
    root.handlers[:] = [handler]
    root.setLevel(level if rank == 0 else logging.ERROR)  # said once, by the main process
    root.propagate = False
    try:
        fn(dataclasses.replace(options, progress=options.progress and rank == 0), kind=kind)
    except HeadstartError as exc:
        errors.put((type(exc).__name__, str(exc)))
        raise SystemExit(1) from None
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def launch(fn: Callable[..., FitResult], options: FitOptions, *, kind: str) -> FitResult:
    """Run ``fn(options, kind=kind)`` in ``options.processes`` processes on this machine.

    Returns the result as the main process wrote it (read back from the run dir).
    """
    import torch.multiprocessing as mp

    from headstart import checkpoint as checkpoint_module
    from headstart import errors as errors_module

    n = options.processes
    if options.batch_size % n and not options.resume:  # (a resumed run's: checked later)
        raise ConfigError(
            f"--batch-size {options.batch_size} is the global batch: it must be divisible by "
            f"--processes {n}"
        )
    if options.device.startswith("cuda") and torch.cuda.device_count() < n:
        raise ConfigError(
            f"--processes {n} on {torch.cuda.device_count()} GPU(s): use at most one process "
            "per GPU, or --device cpu"
        )
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    level = logging.getLogger("headstart").getEffectiveLevel()
    log.info("starting %d training processes", n)
    try:
        mp.start_processes(
            _worker,
            args=(fn, options, kind, n, _free_port(), level, queue),
            nprocs=n,
            start_method="spawn",
        )
    except (mp.ProcessExitedException, mp.ProcessRaisedException) as exc:
        # A headstart error on one process (a full disk on the main one) may reach us as
        # another process's crash when the group falls apart: the reported error wins.
        if not queue.empty():
            name, message = queue.get()
            cls: type[HeadstartError] = getattr(
                errors_module, name, getattr(checkpoint_module, name, HeadstartError)
            )
            raise cls(message) from None
        raise RuntimeError(f"a training process failed: {exc}") from exc
    return _read_result(options, kind)


def _read_result(options: FitOptions, kind: str) -> FitResult:
    from headstart.api import FitResult
    from headstart.plan import Plan
    from headstart.run import load_run
    from headstart.train import EpochMetrics, History

    assert options.out is not None
    run = load_run(options.out)
    import csv

    with open(run.path / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))

    def value(v: str) -> float | None:
        return None if v == "" else float(v)

    epochs = [
        EpochMetrics(
            epoch=int(r["epoch"]),
            **{k: value(v) for k, v in r.items() if k != "epoch"},  # type: ignore[arg-type]
        )
        for r in rows
    ]
    metrics = run.meta["metrics"]
    history = History(epochs, metrics["best_epoch"], metrics["stopped_early"])
    return FitResult(
        run_dir=run.path,
        model=run.model,
        classes=run.classes,
        plan=Plan.from_dict(run.meta["plan"]),
        history=history,
        source=run.meta["source"],
        metrics=metrics,
        timings=run.meta["timings"],
    )

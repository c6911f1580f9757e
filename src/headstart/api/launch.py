"""``fit --processes N``: start N training processes on this machine (torch's spawn),
each running :func:`headstart.fit` inside the group that
:class:`headstart.train.parallel.Parallel` joins, and read the main one's result back.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

import torch

from headstart import errors as errors_module
from headstart.api.result import FitResult
from headstart.config.options import FitOptions
from headstart.errors import ConfigError, HeadstartError
from headstart.plan.make import Plan
from headstart.sources.target import load_run
from headstart.train import checkpoint as checkpoint_module
from headstart.train.loop import EpochMetrics, History

log = logging.getLogger(__name__)


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

    n = options.processes
    # (a resumed run's: checked later; auto: sized as a multiple of n)
    if options.batch_size is not None and options.batch_size % n and not options.resume:
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

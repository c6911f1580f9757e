"""``fit --processes N``: start N training processes on this machine (torch's spawn),
each running :func:`headstart.fit` inside the group that
:class:`headstart.train.parallel.Parallel` joins, and read the main one's result back.

With ``--nodes M --node-rank R --main-address HOST:PORT`` the group spans M machines, each
running the same command: this machine's N processes take the global ranks ``R*N`` to
``R*N + N - 1`` and meet the others through torch.distributed's ``env://`` rendezvous
(``MASTER_ADDR``/``MASTER_PORT`` at the main machine, ``WORLD_SIZE = M*N``, ``RANK``,
``LOCAL_RANK``), the variables torchrun and ``accelerate launch`` set too: a process that
finds them already set (started by torchrun) joins that group instead of launching one
(:func:`headstart.train.parallel.in_launched_group`).
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
from headstart.config.groups import main_address
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


@dataclasses.dataclass(frozen=True)
class _Group:
    """Where this machine's processes sit in the group, and where the group meets."""

    address: str
    port: int
    world: int  # processes over all machines
    first: int  # the global rank of this machine's first process
    local: int  # processes on this machine

    @classmethod
    def of(cls, options: FitOptions) -> _Group:
        n = options.processes
        if options.nodes == 1:
            return cls("127.0.0.1", _free_port(), n, 0, n)
        assert options.main_address is not None  # checked with the options
        host, port = main_address(options.main_address)
        return cls(host, port, n * options.nodes, options.node_rank * n, n)


def _worker(
    local_rank: int,
    fn: Callable[..., Any],
    options: FitOptions,
    kind: str,
    group: _Group,
    level: int,
    errors: Any,
) -> None:
    rank = group.first + local_rank
    # The processes share the machine's cores instead of each taking them all.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // group.local)))
    os.environ.update(
        {
            "MASTER_ADDR": group.address,
            "MASTER_PORT": str(group.port),
            "WORLD_SIZE": str(group.world),
            "RANK": str(rank),
            "LOCAL_RANK": str(local_rank),
            "LOCAL_WORLD_SIZE": str(group.local),
            "GROUP_RANK": str(group.first // group.local),  # the machine's, as torchrun's
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
    """Run ``fn(options, kind=kind)`` in ``options.processes`` processes on this machine,
    this machine's share of a group of ``options.nodes`` machines.

    Returns the result as the main process wrote it (read back from the run dir, which
    every machine must see).
    """
    import torch.multiprocessing as mp

    n = options.processes
    group = _Group.of(options)
    # (a resumed run's: checked later; auto: sized as a multiple of the group)
    if options.batch_size is not None and options.batch_size % group.world and not options.resume:
        among = (
            f"--processes {n}"
            if group.world == n
            else f"the group's {group.world} processes (--processes {n} x --nodes {options.nodes})"
        )
        raise ConfigError(
            f"--batch-size {options.batch_size} is the global batch: it must be divisible by "
            f"{among}"
        )
    if options.device.startswith("cuda") and torch.cuda.device_count() < n:
        raise ConfigError(
            f"--processes {n} on {torch.cuda.device_count()} GPU(s): use at most one process "
            "per GPU, or --device cpu"
        )
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    level = logging.getLogger("headstart").getEffectiveLevel()
    log.info(
        "starting %d training processes%s",
        n,
        f" (ranks {group.first} to {group.first + n - 1} of {group.world}, meeting at "
        f"{group.address}:{group.port})"
        if options.nodes > 1
        else "",
    )
    try:
        mp.start_processes(
            _worker,
            args=(fn, options, kind, group, level, queue),
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

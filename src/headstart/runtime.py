"""Where and how reproducibly torch runs: the device (``--device``) and the seeds."""

from __future__ import annotations

import logging
import os
import random
from typing import TYPE_CHECKING

import numpy as np
import torch

from headstart.errors import ConfigError

if TYPE_CHECKING:
    pass
log = logging.getLogger(__name__)


# Data-loader workers when --workers is not given.  On a CUDA GPU the model waits for the
# CPU that decodes and augments the images: one H200, resnet50 at 224 pixels, 1,198
# images, headstart's defaults with no workers, 318 images/s (bench/gpu_precision.py,
# bench/RESULTS.md "One GPU").  On the CPU the training's own threads use the cores, and
# workers would take them away: none there.
MAX_AUTO_WORKERS = 8


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the OS says, else all)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def loader_workers(
    workers: int | None, device: torch.device, processes: int = 1, *, kind: str = "images"
) -> int:
    """``--workers``, or when not given: for images on a CUDA device, up to
    :data:`MAX_AUTO_WORKERS` of this machine's CPUs (shared by ``processes`` training
    processes, one left for each of them); else none (texts are tokenised once, before
    the loader: a worker would only pad batches, and forking after the tokenizer's
    threads ran makes it warn)."""
    if workers is not None:
        return workers
    if device.type != "cuda" or kind != "images":
        return 0
    return max(0, min(MAX_AUTO_WORKERS, usable_cpus() // max(1, processes) - 1))


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a generator for the data loader's shuffling."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"--device {device!r}: {exc}; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available here; use --device cpu")
    return dev

"""Repeatable shuffling and augmentation: the same seed gives the same run, resumable mid-epoch.

The training loader does not draw its order or its augmentation from a running random
stream (whose state would depend on every earlier draw, in every worker process).
Instead, epoch ``e`` of a run seeded ``s`` has a fixed order and a fixed seed per sample,
both a pure function of ``(s, e)``:

- :class:`EpochBatchSampler` yields the batches of an epoch in that order, can start
  after the batches a resumed run has already trained on, and, in a data-parallel run,
  gives each process its slice of every global batch.
- :class:`SeededDataset` seeds torch's generator with the sample's seed around each
  transform (in a fork of the generator state, so dropout's stream is untouched).

So the result does not depend on ``--workers`` (which worker loads an item no longer
matters), a resumed epoch replays exactly, and a global batch holds the same samples with
the same augmentation whatever the number of processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def _epoch_plan(n: int, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """The order of epoch ``epoch`` and one augmentation seed per position in it."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    seeds = rng.integers(0, 2**63 - 1, size=n, dtype=np.int64)
    return order, seeds


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(index, sample_seed)`` for :class:`SeededDataset`, by epoch.

    ``batch_size`` is the global batch; with ``world > 1`` each process (``rank``) gets
    an equal share of every global batch (its slice of the positions).  ``drop_last``
    drops the epoch's last global batch when it is short.  :meth:`set_epoch` picks the
    epoch and how many global batches of it to skip (a resumed run).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        seed: int,
        drop_last: bool = False,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} is not divisible by {world} processes")
        self.n = n
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world = world
        self.epoch = 1
        self.skip = 0

    def set_epoch(self, epoch: int, *, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        """Global batches in a whole epoch (the same on every process)."""
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def global_size(self, step: int) -> int:
        """How many samples the epoch's ``step``-th (0-based) global batch holds."""
        return min(self.batch_size, self.n - step * self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order, seeds = _epoch_plan(self.n, self.seed, self.epoch)
        for step in range(self.skip, len(self)):
            lo = step * self.batch_size
            hi = lo + self.global_size(step)
            # Contiguous, equal (or near-equal) slices: rank r takes the r-th part.
            part = np.array_split(np.arange(lo, hi), self.world)[self.rank]
            yield [(int(order[p]), int(seeds[p])) for p in part]


class SeededDataset(Dataset[Any]):
    """``dataset[i]`` with torch's generator seeded by the sample's own seed.

    Indexed by the ``(index, seed)`` pairs :class:`EpochBatchSampler` yields.  The
    transform's random draws (crop, flip) come from torch's global CPU generator, which
    is restored afterwards, so loading in the main process does not move the stream
    dropout draws from.
    """

    def __init__(self, dataset: Dataset[Any]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        # CPU generator only (torch.manual_seed would also reseed every GPU's), restored
        # afterwards; cheaper than torch.random.fork_rng.
        cpu = torch.default_generator
        state = cpu.get_state()
        cpu.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            cpu.set_state(state)


def set_deterministic() -> None:
    """Deterministic kernels only (an error names any op that has none); no autotuning."""
    # cuBLAS needs a fixed workspace to be deterministic; must be set before its first use.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False

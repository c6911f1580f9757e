"""The training budget, sized from the data: batch size, epochs (counted as optimizer
steps) and which epoch is kept, each with the reason, for the plan and headstart.json.

A fixed number of epochs is a different amount of training for 80 images than for
8,000: 10 epochs at batch 32 are 30 optimizer steps on 100 images, which leaves a new head
and a fine-tuned backbone far from converged (digits 5-9, 20 per class, ``full``: test
accuracy 0.45 after 30 steps, 0.89 after 300 at the same rate).  So the default budget is
counted in steps:

- the batch: a tenth of the training set, rounded down to a power of two, within
  :data:`MIN_BATCH`..:data:`MAX_BATCH` (and never more than the data): small sets get
  small batches and so enough steps per epoch, large ones the usual 32;
- the epochs: enough for :data:`TARGET_STEPS` steps, at least :data:`MIN_EPOCHS` (every
  image seen a few times) and at most :data:`MAX_EPOCHS`.  The schedule warms up and then
  decays to about zero (:mod:`headstart.train.loop`), so the last epoch is a good one;
- the epoch kept: with fewer than :data:`MIN_VAL_TO_SELECT` validation items, the "best"
  epoch is chosen on noise (20 images: one image is 5 points), so the last is kept.

``--epochs``, ``--batch-size`` and ``--select`` override each rule; the budget says which
were given.  The figures behind the constants: ``bench/defaults.py``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "HOLDOUT",
    "MAX_BATCH",
    "MAX_EPOCHS",
    "MIN_BATCH",
    "MIN_EPOCHS",
    "MIN_VAL_TO_SELECT",
    "TARGET_STEPS",
    "Budget",
    "holdout",
    "size_budget",
    "steps_per_epoch",
]

# Digits 5-9 (80 training images), full, lr 1e-2: 150 steps 0.949, 300 steps 0.965,
# 600 steps 0.967 test accuracy; 300 is where more steps stop paying.
TARGET_STEPS = 300
MIN_BATCH, MAX_BATCH = 8, 32
MIN_EPOCHS, MAX_EPOCHS = 5, 100
# Below this many validation items, one item moves the accuracy by more than half a
# point and the best epoch is picked on noise: keep the last one.
MIN_VAL_TO_SELECT = 200
HOLDOUT = 0.2  # the validation split held out when the data are large enough for one


@dataclass(frozen=True)
class Budget:
    """What a fit trains for, and why."""

    batch_size: int
    epochs: int
    steps: int  # optimizer steps over the whole fit
    select: str  # "best" or "last"
    why: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "why": list(self.why)}

    def describe(self) -> str:
        return (
            f"budget: batch {self.batch_size}, {self.epochs} epochs ({self.steps} optimizer "
            f"steps), keep the {self.select} epoch; " + "; ".join(self.why)
        )


def holdout(
    n_items: int, *, val_fraction: float | None, needs_validation: bool
) -> tuple[float, str]:
    """The share of the labelled items held out to validate on, and why.

    ``auto`` (None) holds out :data:`HOLDOUT` when that gives at least
    :data:`MIN_VAL_TO_SELECT` items; below, a split would only report noise (the last
    epoch is kept anyway) and costs labels: every item trains (digits 5-9, 20 per class,
    ``linear``: 0.960 with all 100 labels against 0.956 with 80; shifted digits 0.896
    against 0.871; BBC News with MiniLM 0.904 against 0.892).  Early stopping or
    ``--select best`` need a validation split: they keep :data:`HOLDOUT`."""
    if val_fraction is not None:
        return val_fraction, f"validation split {val_fraction:.0%} as given"
    if needs_validation:
        return HOLDOUT, f"validation split {HOLDOUT:.0%}: --patience or --select best need it"
    if n_items * HOLDOUT >= MIN_VAL_TO_SELECT:
        return HOLDOUT, f"validation split {HOLDOUT:.0%} ({int(n_items * HOLDOUT)} items)"
    return 0.0, (
        f"no validation split: {HOLDOUT:.0%} of {n_items} items would be too few to choose "
        "or measure by, so every labelled item trains"
    )


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps per epoch as the loaders batch ``n`` items (no last batch of one)."""
    full, rest = divmod(n, batch_size)
    return max(1, full + (1 if rest >= 2 or full == 0 else 0))


def size_budget(
    n_train: int,
    n_val: int,
    *,
    batch_size: int | None = None,
    epochs: int | None = None,
    select: str | None = None,
    patience: int | None = None,
    multiple_of: int = 1,
) -> Budget:
    """The budget for ``n_train`` training and ``n_val`` validation items; a value given
    (not None) is kept as given, and the reason says so.  ``multiple_of``: processes that
    share the (global) batch, which a sized batch is a multiple of."""
    why = []
    if batch_size is None:
        batch_size = min(
            n_train, max(MIN_BATCH, min(MAX_BATCH, 2 ** int(math.log2(max(n_train / 10, 1)))))
        )
        batch_size = max(1, -(-batch_size // multiple_of)) * multiple_of
        why.append(f"batch {batch_size} for {n_train} training items")
    else:
        why.append(f"batch {batch_size} as given")
    per_epoch = steps_per_epoch(n_train, batch_size)
    if epochs is None:
        epochs = max(MIN_EPOCHS, min(MAX_EPOCHS, math.ceil(TARGET_STEPS / per_epoch)))
        why.append(
            f"{epochs} epochs of {per_epoch} steps: at least {TARGET_STEPS} steps to converge"
            if epochs * per_epoch >= TARGET_STEPS or epochs == MAX_EPOCHS
            else f"{epochs} epochs of {per_epoch} steps (each item seen {MIN_EPOCHS} times)"
        )
    else:
        why.append(f"{epochs} epochs as given")
    if select is None and patience is not None:
        select = "best"
        why.append("the best epoch: --patience stops on it")
    elif select is None:
        select = "best" if n_val >= MIN_VAL_TO_SELECT else "last"
        why.append(
            f"the best epoch on {n_val} validation items"
            if select == "best"
            else f"the last epoch: {n_val} validation items are too few to pick one by"
        )
    else:
        why.append(f"the {select} epoch as given")
    return Budget(batch_size, epochs, epochs * per_epoch, select, tuple(why))

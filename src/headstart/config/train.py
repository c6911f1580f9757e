"""How to train (the plan says *what* trains): epochs, batch size, warm-up, selection,
label smoothing, seed and device, checked when made.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from headstart.errors import ConfigError

if TYPE_CHECKING:
    pass
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """How to train (the plan says *what* trains)."""

    epochs: int = 10
    batch_size: int = 32
    warmup_epochs: float = 1.0
    patience: int | None = None  # early stopping: epochs without improvement
    select: str = "best"  # keep the "best" epoch on validation, or the "last"
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1 (got {self.epochs})")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1 (got {self.batch_size})")
        if self.select not in ("best", "last"):
            raise ConfigError(f"--select must be 'best' or 'last' (got {self.select!r})")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"--patience must be at least 1 (got {self.patience})")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"--label-smoothing must be in [0, 1) (got {self.label_smoothing})")

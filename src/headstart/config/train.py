"""How to train (the plan says *what* trains): epochs, batch size, warm-up, selection,
label smoothing, seed and device, checked when made (by the same rules as the options
they come from, :mod:`headstart.config.fields`).
"""

from __future__ import annotations

from dataclasses import dataclass

from headstart.config.fields import Checked, Select, option
from headstart.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Checked):
    """How to train (the plan says *what* trains)."""

    epochs: int = option("training epochs", default=10, at_least=1)
    batch_size: int = option("batch size", default=32, at_least=1)
    warmup_epochs: float = option("warm-up, in epochs", default=1.0, at_least=0)
    patience: int | None = option(
        "early stopping: epochs without improvement", default=None, at_least=1
    )
    select: str = option(
        parse=Select, help="keep the best epoch on validation, or the last", default="best"
    )
    label_smoothing: float = option("label smoothing", default=0.0, at_least=0, below=1)
    seed: int = option("seed", default=0)
    device: str = option("device", default="auto")
    progress: bool = option("progress bars", default=True)

    def _check(self) -> None:
        if self.select == Select.AUTO:  # train.budget decides before a TrainConfig is made
            raise ConfigError("TrainConfig: select must be best or last once the fit runs")

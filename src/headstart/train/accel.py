"""GPU speed-ups around the unchanged training loop, and batch-size halving on OOM.

- :func:`wrap` returns the model the loop trains: on a CUDA device, with ``channels_last``
  weights and inputs, a ``bfloat16`` autocast forward (``--precision auto`` picks it where
  the GPU supports it; bf16 keeps fp32's range, so no loss scaler is needed) and,
  with ``--compile``, a ``torch.compile``d forward.  It shares the target model's modules
  and state dict keys, so saving and best-epoch copies are unaffected.  On the CPU,
  with the defaults, it returns the model itself: CPU training is exactly as before.
- :func:`halve_on_oom` runs a whole training (model built afresh each time) and, when
  CUDA runs out of memory, runs it again at half the batch size, down to 1.

These paths are exercised on the CPU by the tests (bf16 autocast and compile exist
there too); the CUDA-specific parts (channels_last speed, OOM) need a GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch
from torch import nn

from headstart.errors import ConfigError
from headstart.sources.target import TargetModel

log = logging.getLogger(__name__)


PRECISIONS = ("auto", "fp32", "bf16")


T = TypeVar("T")


@dataclass(frozen=True)
class Accel:
    precision: str  # "fp32" or "bf16"
    channels_last: bool
    compile: bool

    @property
    def active(self) -> bool:
        return self.precision != "fp32" or self.channels_last or self.compile

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "channels_last": self.channels_last,
            "compile": self.compile,
        }


def resolve(options: Any, device: torch.device) -> Accel:
    """What ``--precision``, ``--channels-last`` and ``--compile`` mean on ``device``."""
    precision = getattr(options, "precision", "auto")
    if precision not in PRECISIONS:
        hint = "; fp16 needs a loss scaler: use bf16" if precision == "fp16" else ""
        raise ConfigError(f"--precision {precision!r}; valid: {', '.join(PRECISIONS)}{hint}")
    cuda = device.type == "cuda"
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    return Accel(
        precision=precision,
        channels_last=cuda and bool(getattr(options, "channels_last", True)),
        compile=bool(getattr(options, "compile", False)),
    )


class AcceleratedModel(nn.Module):
    """``head(dropout(backbone(x)))`` with the speed-ups of ``accel``; same modules."""

    def __init__(self, model: TargetModel, accel: Accel, device_type: str) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.dropout = model.dropout
        self.head = model.head
        self.accel = accel
        self.device_type = device_type
        if accel.channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        self._run: Callable[[torch.Tensor], torch.Tensor] = (
            torch.compile(self._forward) if accel.compile else self._forward
        )

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.dropout(self.backbone(x)))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.accel.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.accel.precision == "bf16":
            with torch.autocast(self.device_type, dtype=torch.bfloat16):
                return self._run(x).float()
        return self._run(x)


def wrap(model: TargetModel, accel: Accel, device: torch.device) -> nn.Module:
    """The model to train: ``model`` itself when nothing is switched on."""
    if not accel.active:
        return model
    log.info(
        "training with %s%s%s",
        accel.precision,
        ", channels_last" if accel.channels_last else "",
        ", torch.compile" if accel.compile else "",
    )
    return AcceleratedModel(model, accel, device.type)


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "CUDA out of memory" in str(exc)
    )


def halve_on_oom(options: Any, run: Callable[[Any], T]) -> T:
    """``run(options)``; on a CUDA out-of-memory error, again with half the batch size.

    ``run`` must build everything afresh from ``options`` (as :func:`headstart.api.
    train_on` does), so a retry starts from the same weights and seeds.  The batch size
    that worked is ``options.batch_size`` of the options the result was trained with.
    """
    while True:
        try:
            return run(options)
        except Exception as exc:
            if not _is_oom(exc) or options.batch_size <= 1:
                raise
            half = max(1, options.batch_size // 2)
            log.warning(
                "CUDA out of memory at --batch-size %d; starting again at %d",
                options.batch_size,
                half,
            )
            del exc
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            options = replace(options, batch_size=half)

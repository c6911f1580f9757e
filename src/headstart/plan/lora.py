"""LoRA for the ``lora`` strategy, through peft: add adapters, train, merge, save.

:func:`add_adapters` wraps a backbone's body in peft's ``LoraModel`` (low-rank
adapters on the plan's target modules; the base weights stay as they are).  After
training, :func:`merge_adapters` folds the adapters into the weights and returns the
body to its own architecture, so a run's ``model.safetensors`` loads like any other
and prediction runs at full speed; the adapter itself is kept beside it
(:func:`save_adapter`: ``adapter_model.safetensors`` + ``adapter_config.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from headstart._io import atomic_path, atomic_write_text
from headstart.errors import ConfigError
from headstart.sources.base import Backbone

ADAPTER_FILE = "adapter_model.safetensors"


ADAPTER_CONFIG = "adapter_config.json"


_NAME = "default"  # peft's adapter name


def lora_settings(
    *, r: int, alpha: int, dropout: float, targets: str | None, default: tuple[str, ...] | None
) -> dict[str, Any]:
    """The plan's ``lora`` entry from the flags; ``targets`` "a,b" or the source's default."""
    modules = [t.strip() for t in targets.split(",") if t.strip()] if targets else []
    return {
        "r": int(r),
        "alpha": int(alpha),
        "dropout": float(dropout),
        "target_modules": modules or list(default or []),
    }


def is_adapter_parameter(name: str) -> bool:
    return "lora_" in name


def add_adapters(backbone: Backbone, settings: dict[str, Any]) -> None:
    """Wrap ``backbone.body`` in a peft ``LoraModel`` with ``settings`` (in place).

    Raises :class:`ConfigError` when no module of the body matches a target name.  A body
    that has its adapters already (the learning-rate range test put them in before the
    loop applies the plan) keeps them.
    """
    from peft import LoraConfig, LoraModel

    if isinstance(backbone.body, LoraModel):
        return

    config = LoraConfig(
        r=int(settings["r"]),
        lora_alpha=int(settings["alpha"]),
        lora_dropout=float(settings["dropout"]),
        target_modules=list(settings["target_modules"]),
        bias="none",
    )
    try:
        backbone.body = LoraModel(backbone.body, config, _NAME)
    except ValueError as exc:  # peft: "Target modules ... not found in the base model"
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(
            f"--lora-targets {','.join(settings['target_modules'])}: {first[:300]}"
        ) from exc


@dataclass
class Adapter:
    """The trained adapter weights (names as peft saves them) and their peft config."""

    state: dict[str, torch.Tensor]
    config: dict[str, Any]


def merge_adapters(backbone: Backbone) -> Adapter | None:
    """Fold the adapters into the base weights and unwrap the body; return the adapter.

    Returns None when the body carries no adapters.
    """
    from peft import LoraModel
    from peft.utils import get_peft_model_state_dict

    body = backbone.body
    if not isinstance(body, LoraModel):
        return None
    state = {
        k: v.detach().cpu().clone()
        for k, v in get_peft_model_state_dict(body, adapter_name=_NAME).items()
    }
    config = body.peft_config[_NAME].to_dict()
    backbone.body = body.merge_and_unload()
    return Adapter(state=state, config=config)


def save_adapter(folder: Path, adapter: Adapter) -> None:
    """Write ``adapter_model.safetensors`` and ``adapter_config.json`` into ``folder``."""
    from safetensors.torch import save_file

    with atomic_path(folder / ADAPTER_FILE) as tmp:
        save_file({k: v.contiguous() for k, v in adapter.state.items()}, str(tmp))
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in adapter.config.items()}
    atomic_write_text(folder / ADAPTER_CONFIG, json.dumps(config, indent=2, default=str) + "\n")

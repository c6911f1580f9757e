"""Plans: which stages train, at which learning rate, with BatchNorm in which mode.

A :class:`Plan` is plain data (printed before training, saved in ``headstart.json``).
Applying it is a few small functions: :func:`apply_plan` sets ``requires_grad`` and
returns the optimizer's parameter groups (frozen parameters are not in any group);
:func:`set_train_mode` puts the model in training mode except the frozen stages, which
stay in eval mode so BatchNorm statistics and dropout do not move.

Strategies (their records: :mod:`headstart.config.strategies`):

- ``linear``: the whole backbone frozen, only the new head trains.
- ``partial:K``: the first K stages frozen; later stages at the backbone rate.
- ``full``: everything trains; backbone at ``lr * backbone_lr_mult`` (default / 10).
- ``scratch``: same architecture, random initialisation, everything at the base rate.
- ``lora``: the backbone frozen, low-rank adapters (peft's LoRA) on its target modules
  train at the base rate with the head; they are merged into the weights after training
  (:mod:`headstart.plan.lora`).

``full`` and ``partial:K`` may also decay the learning rate layer by layer
(``layer_decay`` < 1: the last trainable stage at the backbone rate, each earlier one
``layer_decay`` times the next).

Any plan that trains part of the backbone may start with ``head_epochs`` epochs in which
only the new head trains, the whole backbone frozen and in eval mode, before the plan
proper: linear probing then fine-tuning ("LP-FT", Kumar et al., "Fine-Tuning can Distort
Pretrained Features and Underperform Out-of-Distribution", ICLR 2022; fastai's
``fine_tune(freeze_epochs=...)``). A randomly initialised head's large early gradients
then never reach the pretrained features.  :func:`head_phase` is the plan of those
epochs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from headstart.config.strategies import (
    STRATEGIES,
    BackboneRate,
    BatchNorm,
    check_head_epochs,
    parse_strategy,
)
from headstart.errors import ConfigError


@dataclass(frozen=True)
class Plan:
    """What trains and how fast.  Stage lists use the source's stage names."""

    strategy: str  # as given: "linear", "partial:2", "full", "scratch"
    frozen_stages: tuple[str, ...]
    trainable_stages: tuple[str, ...]
    reinitialise: bool  # scratch: the backbone starts from random weights
    head_lr: float
    backbone_lr: float  # 0.0 when the whole backbone is frozen
    bn_mode: BatchNorm  # what BatchNorm and dropout do in the backbone
    weight_decay: float
    layer_decay: float = 1.0  # stage i trains at backbone_lr * layer_decay**(last - i)
    lora: dict[str, Any] | None = None  # lora: r, alpha, dropout, target_modules
    head_epochs: int = 0  # the first epochs train only the head (LP-FT), then the plan

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["frozen_stages"] = list(self.frozen_stages)
        d["trainable_stages"] = list(self.trainable_stages)
        d["bn_mode"] = self.bn_mode.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        return cls(
            strategy=str(d["strategy"]),
            frozen_stages=tuple(d["frozen_stages"]),
            trainable_stages=tuple(d["trainable_stages"]),
            reinitialise=bool(d["reinitialise"]),
            head_lr=float(d["head_lr"]),
            backbone_lr=float(d["backbone_lr"]),
            bn_mode=BatchNorm.parse(str(d["bn_mode"])),
            weight_decay=float(d["weight_decay"]),
            layer_decay=float(d.get("layer_decay", 1.0)),
            lora=dict(d["lora"]) if d.get("lora") else None,
            head_epochs=int(d.get("head_epochs", 0)),
        )

    @property
    def num_frozen(self) -> int:
        return len(self.frozen_stages)


def make_plan(
    strategy: str,
    stage_names: Sequence[str],
    *,
    lr: float = 1e-3,
    backbone_lr_mult: float = 0.1,
    weight_decay: float = 0.01,
    leading_stages: int = 0,
    layer_decay: float = 1.0,
    lora: dict[str, Any] | None = None,
    head_epochs: int = 0,
) -> Plan:
    """Turn a strategy string into a plan for a backbone with ``stage_names``.

    ``leading_stages`` (a transformer's embeddings) are frozen by ``partial:K`` on top of
    the first K stages.  ``lora`` (``r``, ``alpha``, ``dropout``, ``target_modules``) is
    required by, and only used by, the ``lora`` strategy.  ``head_epochs``: train only
    the head for that many epochs first (a plan that trains some of the backbone).
    """
    # the numbers were checked with the options (headstart.config.fields)
    name, k = parse_strategy(strategy)
    record = STRATEGIES.get(name)
    check_head_epochs(name, head_epochs)
    n = len(stage_names)
    lead = leading_stages if record.leading else 0
    if k is not None and not 1 <= k < n - lead:
        kinds = f"{', '.join(stage_names[:lead])} and " if lead else ""
        raise ConfigError(
            f"strategy {strategy!r}: this source has {n} stages ({', '.join(stage_names)}); "
            f"K must be 1..{n - lead - 1}, partial:K freezing {kinds}the next K "
            "(use 'linear' to freeze all of them)"
        )
    if record.adapters and not (lora and lora.get("target_modules")):
        raise ConfigError(
            f"strategy {name!r} needs target modules: pass --lora-targets NAME,NAME (names of "
            "Linear layers, e.g. query,value for BERT); hf: sources know their defaults"
        )
    frozen = record.frozen((k + lead) if k is not None else None, n)
    trainable = tuple(stage_names[frozen:])
    if record.adapters:
        backbone_lr = lr  # the adapters' rate (record.rate is BASE)
    elif not trainable:
        backbone_lr = 0.0
    elif record.rate is BackboneRate.BASE:
        backbone_lr = lr
    else:
        backbone_lr = lr * backbone_lr_mult
    return Plan(
        strategy=strategy,
        frozen_stages=tuple(stage_names[:frozen]),
        trainable_stages=trainable,
        reinitialise=record.reinitialise,
        head_lr=lr,
        backbone_lr=backbone_lr,
        bn_mode=record.batchnorm if frozen else BatchNorm.ALL_TRAIN,
        weight_decay=weight_decay,
        layer_decay=layer_decay if trainable else 1.0,
        lora=dict(lora) if record.adapters and lora else None,
        head_epochs=head_epochs,
    )


def head_phase(plan: Plan) -> Plan:
    """The plan of the first ``plan.head_epochs`` epochs: every stage frozen (eval mode),
    only the head trains."""
    stages = plan.frozen_stages + plan.trainable_stages
    return replace(
        plan,
        frozen_stages=stages,
        trainable_stages=(),
        backbone_lr=0.0,
        bn_mode=BatchNorm.FROZEN_EVAL,
        layer_decay=1.0,
        lora=None,
        head_epochs=0,
    )


def format_plan(plan: Plan) -> str:
    """A few human lines describing the plan, for printing before training."""
    frozen = ", ".join(plan.frozen_stages) or "nothing"
    trains = ", ".join(plan.trainable_stages) or "nothing (backbone frozen)"
    lines = [
        f"plan: {plan.strategy}" + (" (random initialisation)" if plan.reinitialise else ""),
        f"  frozen:    {frozen}",
        f"  trains:    {trains} @ lr {plan.backbone_lr:g}"
        if plan.trainable_stages
        else f"  trains:    {trains}",
        f"  head:      new Linear @ lr {plan.head_lr:g}",
        *(
            [
                f"  lora:      rank {plan.lora['r']}, alpha {plan.lora['alpha']}, dropout "
                f"{plan.lora['dropout']} on {', '.join(plan.lora['target_modules'])} "
                f"@ lr {plan.backbone_lr:g}"
            ]
            if plan.lora
            else []
        ),
        *(
            [f"  layer-wise lr decay {plan.layer_decay:g} per stage towards the input"]
            if plan.layer_decay != 1.0
            else []
        ),
        f"  batchnorm: {plan.bn_mode.describe()}; weight decay {plan.weight_decay:g}",
        *(
            [
                f"  first:     {plan.head_epochs} epoch{'s' if plan.head_epochs > 1 else ''} "
                "train only the head (backbone frozen, eval mode), then the above"
            ]
            if plan.head_epochs
            else []
        ),
    ]
    return "\n".join(lines)

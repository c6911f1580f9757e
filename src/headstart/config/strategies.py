"""Strategies: each one a record, registered once, that every module reads.

What a strategy does is decided here and nowhere else (the way timm's pretrained configs
and torchvision's ``Weights`` carry their own facts): how many stages it freezes, whether
the backbone starts again from random weights, the backbone's learning rate, what
BatchNorm and dropout do, the augmentation ``--augment auto`` gives it, and whether it
trains adapters.  Modules that need to know ask the record (``strategy_of(text).adapters``)
instead of comparing names.

``--strategy auto`` is not a strategy but the request to choose one from measurements of
the data (:mod:`headstart.choose.recommend`); :func:`is_auto` says whether it was asked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from headstart.config.fields import Augment, parse_choice
from headstart.errors import ConfigError
from headstart.registry import Registry

__all__ = [
    "AUTO",
    "STRATEGIES",
    "BackboneRate",
    "BatchNorm",
    "Strategy",
    "StrategyName",
    "check_head_epochs",
    "is_auto",
    "parse_strategy",
    "reinitialises",
    "resolve_augment",
    "strategy_of",
]

AUTO = "auto"  # --strategy auto: measure the data, then choose (headstart.choose.recommend)


class BatchNorm(str, Enum):
    """What the backbone's BatchNorm statistics and dropout do while the model trains."""

    ALL_TRAIN = "all-train"  # every stage in training mode
    FROZEN_EVAL = "frozen-eval"  # frozen stages in eval mode: statistics and dropout fixed
    ADAPTERS = "adapters"  # LoRA: base weights frozen, the model in training mode

    def describe(self) -> str:
        return {
            BatchNorm.ALL_TRAIN: "all stages train",
            BatchNorm.FROZEN_EVAL: "frozen stages in eval mode",
            BatchNorm.ADAPTERS: "base weights frozen, dropout on (adapters train)",
        }[self]

    @classmethod
    def parse(cls, text: str) -> BatchNorm:
        """A saved value, or the sentence run dirs before this record saved."""
        for mode in cls:
            if text in (mode.value, mode.describe()):
                return mode
        raise ConfigError(f"unknown BatchNorm mode {text!r}; valid: {[m.value for m in cls]}")


class BackboneRate(str, Enum):
    """The learning rate of the stages a strategy trains."""

    MULTIPLIED = "lr x backbone-lr-mult"  # pretrained weights move gently
    BASE = "lr"  # random weights (scratch) or adapters (lora) learn at the head's rate


@dataclass(frozen=True)
class Strategy:
    """One strategy's facts.

    ``frozen(k, n)`` is how many of a backbone's ``n`` stages it freezes, given
    ``partial:K``'s ``k`` (None for the others); ``leading`` says whether a backbone's
    leading stages (a transformer's embeddings) are frozen on top of those K.
    """

    name: str
    summary: str
    frozen: Callable[[int | None, int], int]
    takes_k: bool = False
    leading: bool = False
    reinitialise: bool = False
    rate: BackboneRate = BackboneRate.MULTIPLIED
    adapters: bool = False
    batchnorm: BatchNorm = BatchNorm.FROZEN_EVAL  # when some stages are frozen
    augment: Augment = Augment.LIGHT  # what --augment auto gives it
    trains_backbone: bool = True  # False: only the new head learns (linear)


STRATEGIES: Registry[Strategy] = Registry("strategy", ConfigError)


def _register(strategy: Strategy) -> None:
    STRATEGIES.register(strategy.name, strategy)


def _all(k: int | None, n: int) -> int:
    return n


def _none(k: int | None, n: int) -> int:
    return 0


def _first_k(k: int | None, n: int) -> int:
    assert k is not None
    return k


# Linear evaluation (Kornblith, Shlens & Le 2019; CLIP's linear probes) fits the head on
# un-augmented images, so the frozen backbone runs once (the feature cache) and the head
# comes out the same with or without the cache; a backbone fine-tuned on little data
# needs augmentation against over-fitting, hence "light" for the others.
_register(
    Strategy(
        "linear",
        "the whole backbone frozen; only the new head trains",
        _all,
        augment=Augment.NONE,
        trains_backbone=False,
    )
)
_register(
    Strategy(
        "partial",
        "the first K stages frozen; the later ones train at the backbone rate",
        _first_k,
        takes_k=True,
        leading=True,
    )
)
_register(Strategy("full", "everything trains; the backbone at the backbone rate", _none))
_register(
    Strategy(
        "scratch",
        "the same architecture from random weights; everything at the base rate",
        _none,
        reinitialise=True,
        rate=BackboneRate.BASE,
    )
)
_register(
    Strategy(
        "lora",
        "the backbone's own weights frozen; LoRA adapters train at the base rate",
        _all,
        rate=BackboneRate.BASE,
        adapters=True,
        batchnorm=BatchNorm.ADAPTERS,
    )
)


def is_auto(text: str) -> bool:
    """``--strategy auto``: choose from measurements of the data."""
    return text == AUTO


def parse_strategy(text: str) -> tuple[str, int | None]:
    """``"partial:2"`` -> ``("partial", 2)``; ``"full"`` -> ``("full", None)``."""
    name, _, arg = str(text).partition(":")
    valid = ", ".join(n + (":K" if STRATEGIES.get(n).takes_k else "") for n in STRATEGIES.names())
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {text!r}; valid: {AUTO} (the default), {valid}")
    if STRATEGIES.get(name).takes_k:
        if not arg.isdigit():
            raise ConfigError(f"strategy {text!r}: give the number of frozen stages, e.g. {name}:2")
        return name, int(arg)
    if arg:
        raise ConfigError(f"strategy {name!r} takes no argument (got {text!r}); valid: {valid}")
    return name, None


def reinitialises(text: str) -> bool:
    """Whether ``--strategy text`` trains from random weights (scratch): the baseline the
    others are measured against.  ``auto`` is no strategy of its own: False."""
    return not is_auto(text) and strategy_of(text).reinitialise


def strategy_of(text: str) -> Strategy:
    """The record of ``--strategy`` ``text`` (``partial:2`` -> partial's), checked."""
    return STRATEGIES.get(parse_strategy(text)[0])


def resolve_augment(augment: str, strategy: str) -> Augment:
    """``--augment`` as it applies to ``strategy``: ``auto`` becomes the strategy's own
    (``none`` for ``linear``, ``light`` for those that train the backbone)."""
    chosen = parse_choice(Augment, augment, name="augment")
    return strategy_of(strategy).augment if chosen is Augment.AUTO else chosen


class StrategyName(str):
    """``--strategy`` parsed once: the text as given (so it is written and compared as
    text), its ``kind`` (``partial``), its ``k`` (2 for ``partial:2``) and its record.

    ``auto`` is a StrategyName too: the request to choose (``is_auto``), with no record.
    """

    kind: str
    k: int | None

    def __new__(cls, text: object) -> StrategyName:
        name = super().__new__(cls, str(text))
        name.kind, name.k = (AUTO, None) if is_auto(str(text)) else parse_strategy(str(text))
        return name

    @property
    def is_auto(self) -> bool:
        return self.kind == AUTO

    @property
    def record(self) -> Strategy:
        """The strategy's facts; asking them of ``auto`` (not yet chosen) is an error."""
        if self.is_auto:
            raise ConfigError("--strategy auto is not chosen yet: recommend picks one first")
        return STRATEGIES.get(self.kind)


def check_head_epochs(strategy: str, head_epochs: int, epochs: int | None = None) -> None:
    """``--head-epochs`` must be fewer than ``epochs`` and for a plan that trains some of
    the backbone (``strategy``: a name as :func:`parse_strategy` returns it)."""
    if head_epochs and not STRATEGIES.get(strategy).trains_backbone:
        raise ConfigError(
            f"--head-epochs: the {strategy} strategy trains only the head in every epoch "
            "already; use it with full, partial:K or lora (or drop --head-epochs)"
        )
    if head_epochs and epochs is not None and head_epochs >= epochs:
        raise ConfigError(
            f"--head-epochs {head_epochs} must be fewer than --epochs {epochs}: the plan "
            "itself needs at least one epoch after the head-only ones"
        )

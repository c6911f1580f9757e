"""The one place where options are checked: each field says its flag's help, its range
and its type, and :class:`Checked` checks them all when an options object is made.

Enum-like values (``--select``, ``--augment``, ``--precision``) are parsed here once into
their types (fields made with ``option(..., parse=TYPE)``): :class:`Select`,
:class:`Augment`, :class:`Precision`, ``str`` enums, so they compare equal to their text
and are written to JSON as it; ``--strategy`` into a
:class:`~headstart.config.strategies.StrategyName`.  Rules that tie two fields together
live in the group that holds both (its ``_check``), still run from here.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from headstart.errors import ConfigError

__all__ = [
    "Augment",
    "Checked",
    "Precision",
    "Select",
    "flag",
    "option",
    "parse_choice",
]


class Select(enum.StrEnum):
    """Which epoch a fit keeps: the best on validation, or the last."""

    AUTO = "auto"  # the best with enough validation items, else the last (train.budget)
    BEST = "best"
    LAST = "last"


class Augment(enum.StrEnum):
    """Training augmentation; ``auto`` is the strategy's own (see its record)."""

    AUTO = "auto"
    LIGHT = "light"
    NONE = "none"


class Precision(enum.StrEnum):
    """Arithmetic while training: ``auto`` is bf16 autocast on a CUDA GPU that has it."""

    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"


def flag(name: str) -> str:
    """``backbone_lr_mult`` -> ``--backbone-lr-mult``."""
    return "--" + name.replace("_", "-")


def parse_choice(kind: type[enum.StrEnum], text: Any, *, name: str) -> Any:
    """``text`` as a member of ``kind``, or a :class:`ConfigError` naming the flag and the
    valid values."""
    if isinstance(text, kind):
        return text
    try:
        return kind(str(text))
    except ValueError:
        valid = ", ".join(m.value for m in kind)
        raise ConfigError(f"{flag(name)} {text!r}; valid: {valid}") from None


def option(
    help: str,
    *,
    default: Any,
    at_least: float | None = None,
    above: float | None = None,
    below: float | None = None,
    at_most: float | None = None,
    **meta: Any,
) -> Any:
    """A dataclass field with its flag's help text and the range its value must lie in
    (``at_least``/``above`` and ``at_most``/``below``; ``None`` for a value that may be
    absent is always allowed).  ``parse=TYPE`` parses the text into ``TYPE`` (a ``str``
    subclass: an enum such as :class:`Select`, or ``StrategyName``), so the field is
    annotated ``str`` (what callers give) and holds the parsed value.  ``cli=False``
    keeps a field off the command line; ``metavar``/``const`` shape the flag; ``auto=True``
    lets the flag take the word ``auto`` for ``None`` (sized from the data when it runs)."""
    bounds = {"at_least": at_least, "above": above, "below": below, "at_most": at_most}
    meta.update({k: v for k, v in bounds.items() if v is not None})
    return field(default=default, metadata={"help": help, **meta})


def _range_text(meta: typing.Mapping[str, Any]) -> str:
    low, high = meta.get("at_least"), meta.get("at_most")
    above, below = meta.get("above"), meta.get("below")
    if (low is not None or above is not None) and (high is not None or below is not None):
        left = f"[{low:g}" if low is not None else f"({above:g}"
        right = f"{high:g}]" if high is not None else f"{below:g})"
        return f"in {left}, {right}"
    if above == 0:
        return "positive"
    if low is not None:
        return f"at least {low:g}"
    if above is not None:
        return f"above {above:g}"
    return f"below {below:g}" if below is not None else f"at most {high:g}"


def _in_range(value: float, meta: typing.Mapping[str, Any]) -> bool:
    checks = (
        ("at_least", lambda v, b: v >= b),
        ("above", lambda v, b: v > b),
        ("at_most", lambda v, b: v <= b),
        ("below", lambda v, b: v < b),
    )
    return all(meta.get(k) is None or ok(value, meta[k]) for k, ok in checks)


def _parse(kind: type[str], value: Any, name: str) -> Any:
    if isinstance(value, kind):
        return value
    if issubclass(kind, enum.StrEnum):
        return parse_choice(kind, value, name=name)
    return kind(value)  # its constructor parses and says what is wrong


@dataclass(frozen=True, kw_only=True)
class Checked:
    """Base of every options group: frozen, keyword-only, checked when made.

    Each field's range (from :func:`option`) and type are checked, enum-like fields are
    parsed into their enum and ``strategy`` into a ``StrategyName``; then each group's
    ``_check`` (rules between its own fields) runs, from the most basic group up.
    """

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = f.metadata.get("parse")
            if kind is not None and value is not None:
                object.__setattr__(self, f.name, _parse(kind, value, f.name))
            elif isinstance(value, bool) or not isinstance(value, int | float):
                continue
            elif not math.isfinite(value):
                raise ConfigError(f"{flag(f.name)} must be a finite number (got {value})")
            elif not _in_range(value, f.metadata):
                raise ConfigError(f"{flag(f.name)} must be {_range_text(f.metadata)} (got {value})")
        for cls in reversed(type(self).__mro__):
            check = cls.__dict__.get("_check")
            if check is not None:
                check(self)

    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes``, checked again."""
        return dataclasses.replace(self, **changes)

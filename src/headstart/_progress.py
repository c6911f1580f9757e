"""Progress bars and the inner runs' voice, decided in one place.

One bar at a time: the outermost long work (compare's folds x strategies, rank's
candidates, a fit's steps, a feature pass, a download) shows a tqdm bar with elapsed and
remaining time; a bar asked for while another is showing is none, so a fit inside
``compare`` does not draw its own.  No bar unless stderr is a terminal, whoever calls
(the Python API too), and none at all once :func:`set_bars` turned them off (``-q``).

An *inner* run is one a command runs on its way to its own result: compare's folds, the
race of ``--strategy auto``, ``rank --validate``'s fine-tuning, the pre-training of a
built-in source's default weights.  Its INFO records carry ``inner`` (set by
:func:`inner`), so that the command line shows them only with ``-v``.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

__all__ = ["Bar", "bar", "bars_on", "in_inner", "inner", "open_bar", "set_bars", "write"]

T = TypeVar("T")

_state: dict[str, Any] = {"bars": True, "active": None}
_inner: contextvars.ContextVar[int] = contextvars.ContextVar("headstart_inner", default=0)
_label: contextvars.ContextVar[str] = contextvars.ContextVar("headstart_label", default="")


def set_bars(on: bool) -> None:
    """Allow bars (still only on a terminal) or none at all (``-q``)."""
    _state["bars"] = on


def bars_on() -> bool:
    """Whether a new bar would show: allowed, on a terminal, and no bar showing."""
    return bool(_state["bars"]) and _state["active"] is None and _is_terminal(sys.stderr)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Bar:
    """A bar that may be none: ``update``, ``set_postfix_str`` and ``close`` do nothing
    then.  Made by :func:`open_bar`."""

    def __init__(self, tqdm_bar: Any = None) -> None:
        self._bar = tqdm_bar

    def update(self, n: float = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def set_postfix_str(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def set_description_str(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_description_str(text, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            if _state["active"] is self._bar:
                _state["active"] = None
            self._bar = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_bar(
    total: float | None, desc: str, *, enabled: bool = True, initial: float = 0, **kw: Any
) -> Bar:
    """A bar over ``total`` units (closed by ``close`` or ``with``), or none: not
    ``enabled``, not a terminal, bars off, or another bar showing.  ``kw`` go to tqdm
    (``unit="B"``, ``unit_scale=True`` for downloads)."""
    if not (enabled and bars_on()):
        return Bar()
    from tqdm import tqdm

    desc = _label.get() or desc
    made = tqdm(total=total, desc=desc, initial=initial, leave=False, file=sys.stderr, **kw)
    _state["active"] = made
    return Bar(made)


def bar(
    iterable: Iterable[T], total: int | None = None, desc: str = "", *, enabled: bool = True
) -> Iterator[T]:
    """``iterable`` with a bar over it, when :func:`open_bar` would make one."""
    if total is None:
        total = len(iterable) if hasattr(iterable, "__len__") else None  # type: ignore[arg-type]
    with open_bar(total, desc, enabled=enabled) as b:
        for item in iterable:
            yield item
            b.update(1)


def write(text: str, stream: Any = None) -> None:
    """A line for people on ``stream`` (stderr), above the bar when one is showing."""
    out = stream or sys.stderr
    active = _state["active"]
    if active is not None:
        active.write(text, file=out)
    else:
        print(text, file=out)
    out.flush()


@contextlib.contextmanager
def inner(label: str = "") -> Iterator[None]:
    """Mark what is logged inside as an inner run's (shown with ``-v`` only); a bar
    made inside is named ``label`` when given."""
    token = _inner.set(_inner.get() + 1)
    named = _label.set(label or _label.get())
    try:
        yield
    finally:
        _label.reset(named)
        _inner.reset(token)


def in_inner() -> bool:
    """Whether the caller is inside :func:`inner`."""
    return _inner.get() > 0

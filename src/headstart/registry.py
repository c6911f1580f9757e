"""A small named registry: refuses duplicates, lists the valid names on a miss."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from headstart.errors import ConfigError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A dict of named entries of one kind (sources, strategies, data sets...).

    ``kind`` is used in messages: ``unknown strategy 'foo'; valid: full, linear``.
    """

    def __init__(self, kind: str, error: type[ConfigError] = ConfigError) -> None:
        self.kind = kind
        self._error = error
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def decorator(self, name: str) -> Callable[[T], T]:
        def _register(entry: T) -> T:
            return self.register(name, entry)

        return _register

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise self._error(
                f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

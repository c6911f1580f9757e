"""What the command line prints for people, and how: one voice on stderr.

Everything for people goes to stderr once: the library's log (what it does, as it does
it) and the command's result (:func:`print_human`); stdout is left to ``--json`` and to
the few outputs meant for another program (``predict``'s labels, ``cache path``:
:func:`print_data`).  A command's result is said by the command; the library logs a
result only where the command does not print it again.

Verbosity: ``-q`` warnings and errors only; the default, the command's own steps and
one bar; ``-v`` also every epoch and the inner runs (compare's folds, the race of
``--strategy auto``, ``rank --validate``, a built-in source's pre-training), and DEBUG.
Each warning is said once per command.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from headstart import _progress

__all__ = ["OnceAndOuter", "ProgressHandler", "print_data", "print_human", "setup_logging"]


class OnceAndOuter(logging.Filter):
    """Each warning once; an inner run's INFO and DEBUG records only when ``verbose``."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose
        self.said: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            text = record.getMessage()
            if text in self.said:
                return False
            self.said.add(text)
            return True
        return self.verbose or not _progress.in_inner()


class ProgressHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """A stream handler that writes above the progress bar, not through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _progress.write(self.format(record), self.stream)
        except Exception:
            self.handleError(record)


def setup_logging(*, quiet: bool = False, verbose: bool = False) -> None:
    """The ``headstart`` logger for a command: one handler on stderr, no propagation
    (a root handler would say every line again), the level and the bars as asked."""
    handler = ProgressHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(OnceAndOuter(verbose))
    root = logging.getLogger("headstart")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    _progress.set_bars(not quiet)


def print_human(args: argparse.Namespace, lines: Sequence[str], stream: Any = None) -> None:
    """A command's result for people, on stderr (``stream`` only for tests); none with
    ``-q``."""
    if args.quiet:
        return
    for line in lines:
        _progress.write(line, stream or sys.stderr)


def print_data(args: argparse.Namespace, lines: Sequence[str]) -> None:
    """Output meant for another program (labels, a path): stdout; with ``--json`` the
    JSON carries it, and the lines are for people: stderr, none with ``-q``."""
    if args.json:
        print_human(args, lines)
        return
    for line in lines:
        print(line, file=sys.stdout)

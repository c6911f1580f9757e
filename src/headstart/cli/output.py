"""What the command line prints for people."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["print_human"]


def print_human(args: argparse.Namespace, lines: Sequence[str], stream: Any = None) -> None:
    """Results for people: stdout normally, stderr when stdout is reserved for JSON."""
    if args.quiet and stream is None:
        return
    out = stream or (sys.stderr if args.json else sys.stdout)
    for line in lines:
        print(line, file=out)

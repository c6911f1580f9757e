"""The flags of a command: an options dataclass's fields as flags, parsed flags back as
the dataclass, and the flags every command shares.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["add_dataclass_flags", "common_flags", "options_from"]


_TYPES: dict[str, Callable[[str], Any]] = {"str": str, "int": int, "float": float}


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field: ``backbone_lr_mult`` -> ``--backbone-lr-mult``; ``data`` positional."""
    fields = [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]
    for f in fields:
        meta = f.metadata
        help_text = meta.get("help", "")
        type_name = str(f.type).replace(" | None", "").strip()
        if f.name == "data":
            # --resume takes DATA from the checkpoint: optional where a command resumes.
            resumes = any(g.name == "resume" for g in fields)
            nargs = "?" if resumes else None
            parser.add_argument("data", metavar="DATA", nargs=nargs, default="", help=help_text)
            continue
        flag = "--" + f.name.replace("_", "-")
        if type_name == "bool":
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text
            )
        else:
            shown = "" if f.default is None else f" (default: {f.default})"
            metavar = meta.get("metavar") or {"int": "N", "float": "X"}.get(
                type_name, f.name.upper()
            )
            # a field with a "const" takes its value optionally: --flag alone means const
            optional = {"nargs": "?", "const": meta["const"]} if "const" in meta else {}
            if optional:
                shown = f" (alone: {meta['const']})"
            convert = _TYPES.get(type_name, str)  # enums and strategies: parsed by the options
            if meta.get("auto"):  # the word auto for None: sized from the data
                convert, shown = _or_auto(convert, flag), " (default: auto)"
            parser.add_argument(
                flag,
                type=convert,
                default=f.default,
                metavar=metavar,
                help=help_text + shown,
                **optional,
            )


def _or_auto(convert: Callable[[str], Any], flag: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text == "auto" else convert(text)

    parse.__name__ = f"{convert.__name__} or auto"  # argparse's "invalid ... value" names it
    return parse


def options_from(cls: type, args: argparse.Namespace) -> Any:
    """The options dataclass from parsed flags; progress bars only on a terminal."""
    names = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in vars(args).items() if k in names}
    if "progress" in names:
        given["progress"] = not args.quiet and sys.stderr.isatty()
    return cls(**given)


def common_flags() -> argparse.ArgumentParser:
    """The flags every command takes (``--json``, ``--debug``, ``-q``, ``-v``), as a parent
    parser for ``add_parser(parents=[...])``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object on stdout (human output on stderr)",
    )
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    loud = common.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    loud.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also every epoch and the inner runs (compare's folds, the race of --strategy "
        "auto, rank --validate, a built-in source's pre-training)",
    )
    return common

"""``headstart cache list|verify|path|add|convert|clear``: the weights and feature cache
from the command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from headstart.cli.output import print_data, print_human

__all__ = ["add_cache_parser"]

log = logging.getLogger("headstart")


def add_cache_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """``headstart cache list|verify|path|add|convert|clear``: the weights cache."""
    folder = argparse.ArgumentParser(add_help=False)
    folder.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help="the cache folder (default $HEADSTART_CACHE, else $TORCH_HOME/hub/checkpoints)",
    )
    p = sub.add_parser(
        "cache",
        help="the weights cache: list, verify, path, add, convert, clear",
        description="The one folder where default weights and URLs are downloaded, "
        "checked (size and sha256, recorded in NAME.sha256.json) and reused.",
    )
    actions = p.add_subparsers(dest="cache_action", metavar="ACTION", required=True)
    q = actions.add_parser(
        "list", parents=[common, folder], help="the files in the cache (nothing is hashed)"
    )
    q.set_defaults(handler=_cmd_cache_list)
    _add_verify_parser(actions, [common, folder])
    _add_path_parser(actions, [common, folder])
    _add_add_parser(actions, [common, folder])
    _add_convert_parser(actions, [common])
    q = actions.add_parser(
        "clear",
        parents=[common, folder],
        help="delete the cached weights and features (with --yes)",
    )
    q.add_argument("--yes", action="store_true", help="really delete")
    q.set_defaults(handler=_cmd_cache_clear)


def _add_verify_parser(actions: Any, parents: list[argparse.ArgumentParser]) -> None:
    """``cache verify [NAME...]``."""
    q = actions.add_parser(
        "verify",
        parents=parents,
        help="hash every file again; damaged ones are an error",
        description="Hash the cached files again and check each against the hash recorded "
        "when it was stored, or the hash in its name (NAME-HASH.pth), and its format. A "
        "damaged download is set aside (NAME.bad-TIMESTAMP) and fetched again the next time "
        "it is needed.",
    )
    q.add_argument("names", metavar="NAME", nargs="*", help="only these (as list names them)")
    q.set_defaults(handler=_cmd_cache_verify)


def _add_path_parser(actions: Any, parents: list[argparse.ArgumentParser]) -> None:
    """``cache path [--for SPEC]``."""
    q = actions.add_parser("path", parents=parents, help="print the cache folder")
    q.add_argument(
        "--for",
        dest="spec",
        metavar="SPEC",
        help="print where SPEC's weights are kept instead (timm:NAME, torchvision:NAME, a URL)",
    )
    q.set_defaults(handler=_cmd_cache_path)


def _add_add_parser(actions: Any, parents: list[argparse.ArgumentParser]) -> None:
    """``cache add FILE --for SPEC``."""
    q = actions.add_parser(
        "add",
        parents=parents,
        help="put a file you downloaded where headstart looks for SPEC's weights",
        description="Check FILE (published hash, completeness, safe to load) and copy it to "
        "where the resolver looks for SPEC's weights: for a machine without network.",
    )
    q.add_argument("file", metavar="FILE", help="the weights file you downloaded")
    q.add_argument(
        "--for",
        dest="spec",
        metavar="SPEC",
        required=True,
        help="whose weights: timm:NAME, torchvision:NAME, or the URL given to --weights",
    )
    q.set_defaults(handler=_cmd_cache_add)


def _add_convert_parser(actions: Any, parents: list[argparse.ArgumentParser]) -> None:
    """``cache convert FILE [--out PATH] [--trust]``: no --cache-dir, it writes beside FILE."""
    q = actions.add_parser(
        "convert",
        parents=parents,
        help="rewrite a .pth as safetensors (one holding pickled code: only with --trust)",
        description="Rewrite a checkpoint as safetensors, which loads without running any "
        "code. The file is read safely first (torch.load(weights_only=True)): plain tensor "
        "checkpoints convert as they are. A file that holds other pickled objects (the one "
        "headstart refuses) is refused here too, and nothing in it runs, unless you give "
        "--trust: then it is read with torch.load(weights_only=False), which RUNS the code "
        "inside it, with your permissions. Give --trust only for a file from a source you "
        "trust.",
    )
    q.add_argument("file", metavar="FILE", help="a .pth / .pt / .bin checkpoint")
    q.add_argument("--out", default=None, help="where to write (default FILE.safetensors)")
    q.add_argument(
        "--trust",
        action="store_true",
        help="unpickle a file that holds pickled objects: this RUNS the code in it; only "
        "for a file from a source you trust",
    )
    q.set_defaults(handler=_cmd_cache_convert)


def _entry_lines(entries: Sequence[Any]) -> list[str]:
    if not entries:
        return ["(the cache is empty)"]
    width = max(len(e.name) for e in entries)
    return [
        f"{e.name:<{width}}  {e.size / 2**20:9.1f} MB  {(e.sha256 or '-')[:12]:<12}  "
        f"{e.status}{f' ({e.detail})' if e.detail else ''}"
        for e in entries
    ]


def _cmd_cache_list(args: argparse.Namespace) -> dict[str, Any]:
    from headstart.features.cache import list_features
    from headstart.weights.cache import list_cache
    from headstart.weights.resolve import cache_dir

    entries = list_cache(args.cache_dir)
    features = list_features(args.cache_dir)
    feature_lines = [
        f"features/{e.name}  {e.size / 2**20:9.1f} MB  {e.meta.get('source')}  "
        f"{'x'.join(map(str, e.meta.get('shape', [])))}  {e.meta.get('data')}"
        for e in features
    ]
    print_data(
        args, [f"cache: {cache_dir(args.cache_dir)}", *_entry_lines(entries), *feature_lines]
    )
    return {
        "cache_dir": str(cache_dir(args.cache_dir)),
        "entries": [e.to_dict() for e in entries],
        "features": [e.to_dict() for e in features],
    }


def _cmd_cache_verify(args: argparse.Namespace) -> dict[str, Any]:
    from headstart.errors import WeightsError
    from headstart.weights.cache import verify_cache
    from headstart.weights.resolve import cache_dir

    entries = verify_cache(args.cache_dir, args.names)
    result = {
        "cache_dir": str(cache_dir(args.cache_dir)),
        "entries": [e.to_dict() for e in entries],
    }
    print_data(args, _entry_lines(entries))
    damaged = [e.name for e in entries if e.status == "damaged"]
    if damaged:
        if args.json:  # the report still goes to stdout; the exit code says it failed
            sys.stdout.write(json.dumps(result) + "\n")
        raise WeightsError(
            f"damaged in {result['cache_dir']}: {', '.join(damaged)}; a download is set "
            "aside and fetched again when next needed; for a file you put there, put a good "
            "copy (headstart cache add FILE --for SPEC)"
        )
    return result


def _cmd_cache_path(args: argparse.Namespace) -> dict[str, Any]:
    from headstart.sources.locate import location_for
    from headstart.weights.resolve import cache_dir

    if args.spec:
        remote = location_for(args.spec, args.cache_dir)
        print_data(args, [str(remote.dest)])
        return {"spec": args.spec, "path": str(remote.dest), "url": remote.url}
    print_data(args, [str(cache_dir(args.cache_dir))])
    return {"cache_dir": str(cache_dir(args.cache_dir))}


def _cmd_cache_add(args: argparse.Namespace) -> dict[str, Any]:
    from headstart.sources.locate import location_for
    from headstart.weights.cache import add_to_cache

    remote = location_for(args.spec, args.cache_dir)
    dest = add_to_cache(args.file, remote, spec=args.spec)
    print_human(args, [f"{args.file} -> {dest}"])
    return {"spec": args.spec, "path": str(dest)}


def _cmd_cache_convert(args: argparse.Namespace) -> dict[str, Any]:
    from headstart.weights.cache import convert_to_safetensors

    done = convert_to_safetensors(args.file, args.out, trust=args.trust)
    print_human(args, [f"written: {done.path}"])
    return {"path": str(done.path), "unpickled": done.unpickled}


def _cmd_cache_clear(args: argparse.Namespace) -> dict[str, Any]:
    from headstart.errors import ConfigError
    from headstart.features.cache import clear_features
    from headstart.weights.cache import clear_cache
    from headstart.weights.resolve import cache_dir

    removed = clear_cache(args.cache_dir, yes=args.yes)
    removed += clear_features(args.cache_dir, yes=args.yes)  # the feature cache too
    files = f"{len(removed)} file{'' if len(removed) == 1 else 's'}"
    if not args.yes and removed:
        size = sum(p.stat().st_size for p in removed) / 2**20
        print_human(args, [str(p) for p in removed])
        raise ConfigError(
            f"nothing deleted: {files} ({size:.1f} MB) in {cache_dir(args.cache_dir)}; run "
            "again with --yes to delete them"
        )
    print_human(args, [f"deleted {files} from {cache_dir(args.cache_dir)}"])
    return {"cache_dir": str(cache_dir(args.cache_dir)), "deleted": [str(p) for p in removed]}

"""partial:K: the frozen prefix cached against running it every epoch (--no-feature-cache).

One process, one data folder (digits drawn as PNGs), one model; after one untimed
warm-up fit (imports, first passes), the same command three times, in order:

- ``cached``: ``headstart fit DIR --source S --weights none --strategy partial:K
  --epochs E --augment none`` with an empty feature cache (the prefix's outputs are
  computed in the run);
- ``cached_warm``: the same command again (the prefix's outputs come from the cache);
- ``no_cache``: the same command with ``--no-feature-cache``.

Prints one JSON line: each run's seconds, CPU seconds, peak memory and validation
accuracy, the ratios, how far apart the cached and uncached runs' saved weights are
(``max_abs_weight_diff``: with ``--augment none`` they train the same way), and the size
of the cached prefix.  Usage::

    PYTHONPATH=src nice -n 10 .venv/bin/python bench/partial_probe.py --strategy partial:3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import digits_folder, fit_cached, measured


def _fit(data: Path, out: Path, cache: Path, args: argparse.Namespace, *extra: str) -> Any:
    return fit_cached(data, out, cache, args, args.strategy, *extra)


def _max_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    sa, sb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert sa.keys() == sb.keys()
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strategy", default="partial:3")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--per-class", type=int, default=20, help="images per digit (10 digits)")
    parser.add_argument("--source", default="timm:resnet18")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--augment", default="none", help="headstart's --augment")
    args = parser.parse_args()

    import torch

    results: dict[str, Any] = {
        "bench": "partial_probe",
        "source": args.source,
        "strategy": args.strategy,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "augment": args.augment,
        "image_size": args.image_size,
        "torch_threads": torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = digits_folder(root / "digits", per_class=args.per_class)
        results["images"] = sum(1 for _ in data.rglob("*.png"))
        # not timed: imports, the model's first build and torch's first passes
        warmup = argparse.Namespace(**{**vars(args), "epochs": 1})
        _fit(data, root / "warmup", root / "cache-warmup", warmup, "--no-feature-cache")
        cached: dict[str, Any] = {}
        with measured(cached):
            cached["val_acc"], cached["feature_cache"] = _fit(
                data, root / "a", root / "cache", args
            )
        warm: dict[str, Any] = {}
        with measured(warm):
            warm["val_acc"], warm["feature_cache"] = _fit(data, root / "b", root / "cache", args)
        nocache: dict[str, Any] = {}
        with measured(nocache):
            nocache["val_acc"], nocache["feature_cache"] = _fit(
                data, root / "c", root / "cache2", args, "--no-feature-cache"
            )
        diff = _max_diff(root / "a", root / "c")
        cache_mb = sum(p.stat().st_size for p in (root / "cache" / "features").glob("*.npy"))
    results.update(
        cached=cached,
        cached_warm=warm,
        no_cache=nocache,
        speedup=round(nocache["seconds"] / cached["seconds"], 2),
        cpu_speedup=round(nocache["cpu_seconds"] / cached["cpu_seconds"], 2),
        speedup_warm=round(nocache["seconds"] / warm["seconds"], 2),
        acc_diff_points=round(100 * (cached["val_acc"] - nocache["val_acc"]), 2),
        max_abs_weight_diff=diff,
        cache_mb=round(cache_mb / 2**20, 1),
    )
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()

"""partial:K: the frozen prefix cached against running it every epoch (--no-feature-cache).

One process, one data folder (digits drawn as PNGs), one model; after one untimed
warm-up fit (imports, first passes: 1 epoch at lr 1e-3, so no range test), the same
command three times, in order:

- ``cached``: ``headstart fit DIR --source S --weights none --strategy partial:K
  --augment none [SETTINGS]`` with an empty feature cache (the prefix's outputs are
  computed in the run);
- ``cached_warm``: the same command again (the prefix's outputs come from the cache);
- ``no_cache``: the same command with ``--no-feature-cache``.

Those three run twice, one JSON line each (``settings``): first ``"defaults"`` (no
training flag: the budget sized from the data, the rate by the range test, the epoch
kept by the validation set's size; ``trained`` says what they came to), then
``"tuned: --lr 0.001 --epochs 5 --batch-size 32 --select best"`` (the setting this bench
was written for; lr 1e-3 and the best epoch were fit's defaults then).

``--augment none`` is fixed in both: it is the condition of the measurement, not a
tuning.  With augmentation the frozen prefix's outputs change every epoch and cannot be
cached (``auto`` gives ``partial`` light augmentation), and without it the cached and
uncached runs train the same way, which ``max_abs_weight_diff`` checks.

Prints one JSON line per settings: each run's seconds, CPU seconds, peak memory and
validation accuracy, the ratios, how far apart the cached and uncached runs' saved
weights are (``max_abs_weight_diff``), and the size of the cached prefix.  Usage::

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

from _common import (
    add_settings_flag,
    digits_folder,
    fit_cached,
    measured,
    settings_label,
    which_settings,
)


def _fit(
    data: Path,
    out: Path,
    cache: Path,
    args: argparse.Namespace,
    settings: dict[str, Any],
    *extra: str,
) -> dict[str, Any]:
    return fit_cached(data, out, cache, args, args.strategy, settings, *extra)


def _max_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    sa, sb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert sa.keys() == sb.keys()
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strategy", default="partial:3")
    parser.add_argument("--epochs", type=int, default=5, help="tuned")
    parser.add_argument("--per-class", type=int, default=20, help="images per digit (10 digits)")
    parser.add_argument("--source", default="timm:resnet18")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32, help="tuned")
    parser.add_argument("--lr", type=float, default=1e-3, help="tuned")
    parser.add_argument(
        "--augment", default="none", help="headstart's --augment (none: the prefix is cached)"
    )
    add_settings_flag(parser)
    args = parser.parse_args()
    runs = which_settings(args.settings)

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = digits_folder(root / "digits", per_class=args.per_class)
        images = sum(1 for _ in data.rglob("*.png"))
        # not timed: imports, the model's first build and torch's first passes
        warmup = {"lr": 1e-3, "epochs": 1, "batch_size": args.batch_size}
        _fit(data, root / "warmup", root / "cache-warmup", args, warmup, "--no-feature-cache")
        for run in runs:
            settings: dict[str, Any] = {}
            if run == "tuned":
                settings = {
                    "lr": args.lr,
                    "epochs": args.epochs,
                    "batch_size": args.batch_size,
                    "select": "best",
                }
            cached: dict[str, Any] = {}
            with measured(cached):
                cached.update(_fit(data, root / f"{run}-a", root / f"{run}-cache", args, settings))
            warm: dict[str, Any] = {}
            with measured(warm):
                warm.update(_fit(data, root / f"{run}-b", root / f"{run}-cache", args, settings))
            nocache: dict[str, Any] = {}
            with measured(nocache):
                nocache.update(
                    _fit(
                        data,
                        root / f"{run}-c",
                        root / f"{run}-cache2",
                        args,
                        settings,
                        "--no-feature-cache",
                    )
                )
            diff = _max_diff(root / f"{run}-a", root / f"{run}-c")
            cache_mb = sum(
                p.stat().st_size for p in (root / f"{run}-cache" / "features").glob("*.npy")
            )
            results: dict[str, Any] = {
                "bench": "partial_probe",
                "settings": settings_label(settings),
                "source": args.source,
                "strategy": args.strategy,
                "epochs": settings.get("epochs", "auto"),
                "batch_size": settings.get("batch_size", "auto"),
                "augment": args.augment,
                "image_size": args.image_size,
                "torch_threads": torch.get_num_threads(),
                "images": images,
                "cached": cached,
                "cached_warm": warm,
                "no_cache": nocache,
                "speedup": round(nocache["seconds"] / cached["seconds"], 2),
                "cpu_speedup": round(nocache["cpu_seconds"] / cached["cpu_seconds"], 2),
                "speedup_warm": round(nocache["seconds"] / warm["seconds"], 2),
                "acc_diff_points": round(100 * (cached["val_acc"] - nocache["val_acc"]), 2),
                "max_abs_weight_diff": diff,
                "cache_mb": round(cache_mb / 2**20, 1),
            }
            print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()

"""What ``--augment auto`` costs a linear probe: the per-epoch loop with ``--augment none``
(what ``auto`` gives ``linear``) against ``--augment light``, same everything else.

A pre-trained source: ``builtin:digits-cnn`` with its default weights (pre-trained on
scikit-learn's digits 0-4), target digits 5-9 (classes it never learnt): ``PER_CLASS``
labelled images per class to train on, and every other image of digits 5-9 (~170 - N
per class, ~800 in all) to validate on, so that one image is ~0.1 point.  Every setting
for each of ``--seeds`` seeds (the seed draws the training images and sets the head's
initialisation, the order and the augmentation).
Both run with ``--no-feature-cache``, so each epoch sees fresh augmented images (with
``light``); validation images are never augmented.  That, and the augmentation, are
what this bench measures, so they are fixed; the training settings run twice:

1. ``"settings": "defaults"``: no --lr, --epochs, --batch-size or --select (the budget
   sized from the data, the rate by the range test).  This line also reports
   ``default``: the fit a user gets with no flag at all, i.e. the feature cache on,
   no augmentation and the head solved on the cached features;
2. ``"settings": "tuned: --lr 0.003 --epochs 20 --batch-size 16 --select best"``: the
   setting this bench was written with (the best epoch was fit's default then).

Prints one JSON line per settings: each setting's validation accuracy per seed, the
mean, and the mean paired difference (light - none) with its standard error.  Usage::

    PYTHONPATH=src .venv/bin/python bench/augment_cost.py --per-class 10,30 --seeds 5
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_settings_flag, settings_label, trained_with, which_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", default="10,30", help="labelled images per class: 10,30")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20, help="tuned")
    parser.add_argument("--lr", type=float, default=3e-3, help="tuned")
    parser.add_argument("--batch-size", type=int, default=16, help="tuned")
    add_settings_flag(parser)
    args = parser.parse_args()
    runs = which_settings(args.settings)

    from headstart.api.fit import fit
    from headstart.config.options import FitOptions

    tuned = {"lr": args.lr, "epochs": args.epochs, "batch_size": args.batch_size, "select": "best"}
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            settings: dict[str, Any] = tuned if run == "tuned" else {}
            results: dict[str, Any] = {
                "bench": "augment_cost",
                "settings": settings_label(settings),
                "source": "builtin:digits-cnn (pre-trained on digits 0-4)",
                "target": "digits 5-9",
                "strategy": "linear",
                "epochs": settings.get("epochs", "auto"),
                "lr": settings.get("lr", "auto"),
                "batch_size": settings.get("batch_size", "auto"),
                "feature_cache": False,
                "cases": [],
            }
            # the defaults line also runs the fit a user gets with no flag at all
            arms = ("none", "light", "default") if run == "defaults" else ("none", "light")
            for per_class in (int(p) for p in args.per_class.split(",")):
                accs: dict[str, list[float]] = {arm: [] for arm in arms}
                trained: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
                spec = f"builtin:digits?classes=5-9&per_class={per_class}"
                n_val = 0
                for seed in range(args.seeds):
                    for arm in arms:
                        # "default": no flag (cache on, augment auto); else the loop, no cache
                        loop = {} if arm == "default" else {"augment": arm, "feature_cache": False}
                        opts = FitOptions(
                            data=f"{spec}&seed={seed}",
                            val=f"{spec}&seed={seed}&split=rest",
                            source="builtin:digits-cnn",
                            strategy="linear",
                            **loop,
                            **settings,
                            seed=seed,
                            cache_dir=str(Path(tmp) / "cache"),
                            out=str(Path(tmp) / f"{run}-p{per_class}-s{seed}-{arm}"),
                            progress=False,
                        )
                        result = fit(opts)
                        accs[arm].append(float(result.metrics["val_acc"]))
                        meta = json.loads((result.run_dir / "headstart.json").read_text())
                        trained[arm].append(trained_with(meta))
                        n_val = meta["data"]["val"]["n_items"]
                diffs = [a - b for a, b in zip(accs["light"], accs["none"], strict=True)]
                sem = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else None
                case: dict[str, Any] = {
                    "per_class": per_class,
                    "val_images_per_seed": n_val,
                    "val_acc_none": accs["none"],
                    "val_acc_light": accs["light"],
                    "mean_none": round(statistics.mean(accs["none"]), 4),
                    "mean_light": round(statistics.mean(accs["light"]), 4),
                    "light_minus_none_points": round(100 * statistics.mean(diffs), 2),
                    "sem_points": round(100 * sem, 2) if sem is not None else None,
                }
                if run == "defaults":
                    case.update(
                        val_acc_default=accs["default"],
                        mean_default=round(statistics.mean(accs["default"]), 4),
                        trained=trained,
                    )
                results["cases"].append(case)
            print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()

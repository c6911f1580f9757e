"""What ``--augment auto`` costs a linear probe: the per-epoch loop with ``--augment none``
(what ``auto`` gives ``linear``) against ``--augment light``, same everything else.

A pre-trained source: ``builtin:digits-cnn`` with its default weights (pre-trained on
scikit-learn's digits 0-4), target digits 5-9 (classes it never learnt): ``PER_CLASS``
labelled images per class to train on, and every other image of digits 5-9 (~170 - N
per class, ~800 in all) to validate on, so that one image is ~0.1 point.  Every setting
for each of ``--seeds`` seeds (the seed draws the training images and sets the head's
initialisation, the order and the augmentation).
Both run with ``--no-feature-cache``, so each epoch sees fresh augmented images (with
``light``); validation images are never augmented.

Prints one JSON line: each setting's validation accuracy per seed, the mean, and the mean
paired difference (light - none) with its standard error.  Usage::

    PYTHONPATH=src .venv/bin/python bench/augment_cost.py --per-class 10,30 --seeds 5
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", default="10,30", help="labelled images per class: 10,30")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    from headstart.api.fit import fit
    from headstart.config.options import FitOptions

    results: dict[str, Any] = {
        "bench": "augment_cost",
        "source": "builtin:digits-cnn (pre-trained on digits 0-4)",
        "target": "digits 5-9",
        "strategy": "linear",
        "epochs": args.epochs,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "feature_cache": False,
        "cases": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for per_class in (int(p) for p in args.per_class.split(",")):
            accs: dict[str, list[float]] = {"none": [], "light": []}
            spec = f"builtin:digits?classes=5-9&per_class={per_class}"
            n_val = 0
            for seed in range(args.seeds):
                for augment in ("none", "light"):
                    opts = FitOptions(
                        data=f"{spec}&seed={seed}",
                        val=f"{spec}&seed={seed}&split=rest",
                        source="builtin:digits-cnn",
                        strategy="linear",
                        epochs=args.epochs,
                        lr=args.lr,
                        batch_size=args.batch_size,
                        augment=augment,
                        feature_cache=False,
                        seed=seed,
                        cache_dir=str(Path(tmp) / "cache"),
                        out=str(Path(tmp) / f"p{per_class}-s{seed}-{augment}"),
                        progress=False,
                    )
                    result = fit(opts)
                    accs[augment].append(float(result.metrics["val_acc"]))
                    meta = json.loads((result.run_dir / "headstart.json").read_text())
                    n_val = meta["data"]["val"]["n_items"]
            diffs = [a - b for a, b in zip(accs["light"], accs["none"], strict=True)]
            sem = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else None
            results["cases"].append(
                {
                    "per_class": per_class,
                    "val_images_per_seed": n_val,
                    "val_acc_none": accs["none"],
                    "val_acc_light": accs["light"],
                    "mean_none": round(statistics.mean(accs["none"]), 4),
                    "mean_light": round(statistics.mean(accs["light"]), 4),
                    "light_minus_none_points": round(100 * statistics.mean(diffs), 2),
                    "sem_points": round(100 * sem, 2) if sem is not None else None,
                }
            )
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()

"""What checkpointing costs a fit: the same training with and without checkpoints.

Trains builtin:digits-cnn (strategy full, random weights) on scikit-learn digits, in one
process, alternating: no checkpointer (as cross-validation trains), a checkpoint at the end
of each epoch (fit's default), and one every 4 steps.  Prints the median time of each and
the ratio to no checkpoints.

The training settings are fixed, not headstart's defaults, because they are part of the
measurement: ``--epochs`` (5) and batch 16 fix the number of optimizer steps, so that
"every 4 steps" means the same number of checkpoints in every arm and the cost is per a
known amount of training; lr 1e-3 is given so that no learning-rate range test runs (its
steps would be timed in every arm and are never checkpointed, diluting the ratio); and
``select best`` keeps the best epoch, as fit did by default when the figures in
RESULTS.md were taken.  What the defaults train is measured by the other benches.

    PYTHONPATH=src nice -n 10 .venv/bin/python bench/checkpoint_overhead.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import settings_label

from headstart.config.options import FitOptions
from headstart.train.assemble import _split, load_training_data, train_on
from headstart.train.checkpoint import Checkpointer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5, help="fixed: the steps measured")
    args = parser.parse_args()
    # fixed, not the defaults: a known number of steps and no range test (docstring)
    fixed = {"lr": 1e-3, "epochs": args.epochs, "batch_size": 16, "select": "best"}
    options = FitOptions(
        data="builtin:digits?classes=0-9&per_class=40",
        weights="none",
        strategy="full",
        **fixed,
        progress=False,
        device="cpu",
    )
    data = load_training_data(options)
    train_data, val_data = _split(options, data)
    times: dict[str, list[float]] = {"none": [], "each epoch": [], "every 4 steps": []}
    for _ in range(args.repeats):
        for name in times:
            with tempfile.TemporaryDirectory() as tmp:
                ck = None
                if name != "none":
                    every = 4 if name == "every 4 steps" else 0
                    ck = Checkpointer.create(Path(tmp) / "run", {"options": {}}, every=every)
                t0 = time.perf_counter()
                train_on(replace(options), train_data, val_data, checkpointer=ck)
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["none"])
    steps = -(-len(train_data) // options.batch_size) * args.epochs
    print(f"settings: {settings_label(fixed, 'fixed')}")
    print(f"{len(train_data)} training images, {steps} steps, {args.repeats} repeats")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:>14}: median {med:.3f}s  ratio {med / base:.3f}")


if __name__ == "__main__":
    main()

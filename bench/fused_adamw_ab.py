"""What torch's fused AdamW saves a full fit: the same ``headstart fit`` with and without
it, alternated in one process (``headstart.train.loop._adamw_kernel`` patched to ``{}`` for the
per-parameter loop that torch uses on the CPU by default).  Besides each whole fit's time
it reports the CPU time spent in ``optimizer.step`` (the part that changes; the whole
fit's CPU time varies by more than that on a shared machine).

The training settings are fixed, not headstart's defaults, because they are part of the
measurement (``"settings": "fixed: ..."`` in the output): ``--epochs``, ``--head-epochs 1``
and ``--batch-size 32`` fix the number and size of the optimizer steps both arms take;
``--lr 0.001`` is given so that no learning-rate range test runs (its own AdamW steps
would add to both arms); ``--backbone-lr-mult 1`` and ``--select best`` are the setting
of the figures in RESULTS.md (the best epoch was fit's default then).  What the defaults
train is measured by the other benches.  Prints one JSON line::

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python bench/fused_adamw_ab.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import digits_folder, flags, headstart_json, measured, settings_label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="fixed: the steps measured")
    args = parser.parse_args()

    import time

    import torch

    import headstart.train.loop as train_module

    in_step = {"cpu": 0.0}
    step = torch.optim.AdamW.step

    def timed_step(self: Any, *a: Any, **k: Any) -> Any:
        t0 = time.process_time()
        try:
            return step(self, *a, **k)
        finally:
            in_step["cpu"] += time.process_time() - t0

    torch.optim.AdamW.step = timed_step  # type: ignore[method-assign]

    # fixed, not the defaults: the same steps in both arms and no range test (docstring)
    fixed = {
        "lr": 1e-3,
        "select": "best",
        "backbone_lr_mult": 1,
        "epochs": args.epochs,
        "head_epochs": 1,
        "batch_size": 32,
    }
    fused_kernel = train_module._adamw_kernel
    runs: dict[str, list[dict[str, Any]]] = {"fused": [], "loop": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = digits_folder(root / "digits", per_class=30)
        argv = [
            "fit", str(data), "--source", "timm:resnet18", "--weights", "none",
            "--strategy", "full", "--image-size", "64", *flags(fixed),
            "--cache-dir", str(root / "cache"), "--json", "-q",
        ]  # fmt: skip
        headstart_json([*argv, "--out", str(root / "warm")])  # imports, fonts: not timed
        for r in range(args.repeats):
            for name in ("fused", "loop") if r % 2 == 0 else ("loop", "fused"):
                train_module._adamw_kernel = fused_kernel if name == "fused" else lambda g: {}
                m: dict[str, Any] = {}
                in_step["cpu"] = 0.0
                with measured(m):
                    out = headstart_json([*argv, "--out", str(root / f"{name}{r}")])
                m["val_acc"] = out["metrics"]["val_acc"]
                m["optimizer_step_cpu_seconds"] = round(in_step["cpu"], 3)
                runs[name].append(m)
    med = {
        n: {
            k: statistics.median(x[k] for x in v)
            for k in ("seconds", "cpu_seconds", "optimizer_step_cpu_seconds")
        }
        for n, v in runs.items()
    }
    print(
        json.dumps(
            {
                "bench": "fused_adamw_ab",
                "settings": settings_label(fixed, "fixed"),
                "median": med,
                "cpu_ratio_fused_over_loop": round(
                    med["fused"]["cpu_seconds"] / med["loop"]["cpu_seconds"], 3
                ),
                "runs": runs,
            }
        )
    )


if __name__ == "__main__":
    main()

"""One CUDA GPU, fp32 against bf16 autocast: the same fit, images per second, peak GPU
memory and accuracy side by side (#19 item 4, "1 GPU vs the same with AMP").

The data is scikit-learn's digits (all 1,797, drawn as 64-pixel PNGs, read at
``--image-size``; the last 30 of each class held out as the test set), so the bench runs
anywhere with no download.  For each model it runs:

1. ``fit DATA --source MODEL --weights none --strategy full --device cuda``: what a user
   gets (``--precision auto`` is bf16 on a GPU that has it, ``--workers`` loader workers
   on a GPU; every training setting is headstart's default); with ``--workers-ab`` the
   same with ``--workers 0`` beside it;
2. the same fit at fixed settings, ``--precision fp32`` and ``--precision bf16``, back to
   back, twice in alternating order.  The settings are fixed because they are the
   measurement (the same steps in both arms, no range test): ``--epochs``,
   ``--batch-size``, ``--lr``, ``--augment none`` (the images are decoded once, so the
   epoch times are the model's, not the decoder's) and ``--workers``.

Images per second are the training images over the median epoch time after the first
(cuDNN's autotuning and allocator warm-up land in the first).  One JSON line per run, a
summary line per model with the bf16/fp32 ratio::

    PYTHONPATH=src python3 bench/gpu_precision.py --out /tmp/gpu
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import digits_folder, flags, headstart_json, settings_label


def epoch_seconds(run: Path) -> list[float]:
    with open(run / "metrics.csv", newline="") as f:
        return [float(row["seconds"]) for row in csv.DictReader(f)]


def train_test(root: Path, per_class: int, test_per_class: int) -> tuple[Path, Path]:
    """digits_folder, the last ``test_per_class`` of each class moved to a test folder."""
    train = digits_folder(root / "train", per_class=per_class, size=64)
    for folder in sorted(p for p in train.iterdir() if p.is_dir()):
        (root / "test" / folder.name).mkdir(parents=True, exist_ok=True)
        for png in sorted(folder.glob("*.png"))[-test_per_class:]:
            png.rename(root / "test" / folder.name / png.name)
    return train, root / "test"


def one_fit(argv: list[str], out: Path, test: Path) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    headstart_json([*argv, "--out", str(out)])
    wall = time.perf_counter() - t0
    evaluated = headstart_json(["evaluate", str(out), str(test), "--json", "-q"])
    meta = json.loads((out / "headstart.json").read_text())
    secs = epoch_seconds(out)
    n_train = meta["data"]["train"]["n_items"]
    steady = statistics.median(secs[1:]) if len(secs) > 1 else secs[0]
    return {
        "accel": meta["accel"],
        "budget": {k: meta["budget"][k] for k in ("batch_size", "epochs", "steps")},
        "lr": meta["lr_find"]["lr"] if meta.get("lr_find") else meta["config"]["lr"],
        "test_acc": round(evaluated["accuracy"], 4),
        "epoch_seconds": [round(s, 3) for s in secs],
        "train_images": n_train,
        "images_per_s": round(n_train / steady, 1),
        "train_s": round(meta["timings"]["train_s"], 2),
        "wall_s": round(wall, 2),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", default="timm:resnet50,timm:vit_small_patch16_224")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4, help="fixed: the steps measured")
    parser.add_argument("--batch-size", type=int, default=64, help="fixed")
    parser.add_argument("--workers", type=int, default=4, help="fixed")
    parser.add_argument("--per-class", type=int, default=200, help="digits per class (<=183 exist)")
    parser.add_argument("--test-per-class", type=int, default=30)
    parser.add_argument(
        "--workers-ab", action="store_true", help="also the defaults with --workers 0"
    )
    args = parser.parse_args()

    import torch

    data, test = train_test(args.out / "digits", args.per_class, args.test_per_class)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    fixed = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": 1e-3,
        "augment": "none",
        "workers": args.workers,
    }
    for model in args.models.split(","):
        base = [
            "fit", str(data), "--source", model, "--weights", "none", "--strategy", "full",
            "--image-size", str(args.image_size), "--device", args.device,
            "--cache-dir", str(args.out / "cache"), "--json", "-q",
        ]  # fmt: skip
        tag = model.split(":")[-1]
        runs: dict[str, list[dict[str, Any]]] = {"fp32": [], "bf16": []}
        row = one_fit(base, args.out / f"{tag}-defaults", test)
        print(json.dumps({"model": model, "settings": "defaults", "gpu": gpu, **row}), flush=True)
        if args.workers_ab:
            row = one_fit([*base, "--workers", "0"], args.out / f"{tag}-defaults-w0", test)
            settings = "defaults but --workers 0 (the default before loader workers on a GPU)"
            print(json.dumps({"model": model, "settings": settings, **row}), flush=True)
        for r in range(args.repeats):
            for precision in ("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32"):
                argv = [*base, *flags(fixed), "--precision", precision]
                row = one_fit(argv, args.out / f"{tag}-{precision}-{r}", test)
                runs[precision].append(row)
                print(
                    json.dumps({"model": model, "settings": settings_label(fixed, "fixed"), **row}),
                    flush=True,
                )
        speed = {p: statistics.median(x["images_per_s"] for x in v) for p, v in runs.items()}
        print(
            json.dumps(
                {
                    "model": model,
                    "summary": True,
                    "gpu": gpu,
                    "torch": torch.__version__,
                    "train_images": runs["fp32"][0]["train_images"],
                    "image_size": args.image_size,
                    "images_per_s_median": speed,
                    "bf16_over_fp32": round(speed["bf16"] / speed["fp32"], 2),
                    "test_acc": {p: [x["test_acc"] for x in v] for p, v in runs.items()},
                    "peak_gpu_mb": {p: v[0]["peak_gpu_mb"] for p, v in runs.items()},
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()

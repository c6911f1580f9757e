"""DANN vs Deep CORAL vs source-only on a real domain shift: digits -> digits-M.

Source domain: scikit-learn's handwritten digits (8x8 grayscale), one half of them,
labelled.  Target domain: the other half, each digit blended into a random patch of one
of scikit-learn's two sample photographs the way MNIST-M is made from MNIST (Ganin &
Lempitsky 2015): ``out = |patch - digit|`` per pixel.  The strokes stay where they were,
but the background is photographic texture and the contrast flips wherever the photo is
brighter than the ink -- the shift the DANN paper adapts across.  The target half is
split again: ``target-train`` (labels thrown away; the adaptation sees only the images)
and ``target-test`` (labelled; used only to report accuracy, after the last epoch).

Each method trains builtin:digits-cnn from its default weights (digits 0-4 pre-training)
with the `full` strategy; 3 seeds (the seed changes the split, the patches, the
initialisation of the head and the order of batches).

First with no training flag, `"settings": "defaults"`: adapt's own defaults (20 epochs,
lr 1e-3, batch 32, no warm-up: `AdaptOptions`; adapt does not size its budget from the
data, its two domains' loaders step together).  Then, only if EPOCHS, `--lr` or
`--batch-size` is given, again with them on the same pairs, `"settings": "tuned: ..."`.
The methods and CORAL weights (`METHODS` below) are what the bench compares.  Prints one
JSON line per settings.

    OMP_NUM_THREADS=1 PYTHONPATH=src nice -n 10 .venv/bin/python bench/adapt_digits.py \\
        [EPOCHS] [--lr LR] [--batch-size B] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import settings_label

# label -> (method, CORAL weight).  "shared-bn" is a control: CORAL with weight 0, i.e.
# source-only training whose batches also carry target images through the backbone, so
# BatchNorm normalises with statistics of both domains -- the one thing DANN and CORAL
# share besides their losses.  What DANN gains over it is the adversarial loss's doing.
METHODS = {
    "source-only": ("source-only", 1.0),
    "shared-bn": ("coral", 0.0),
    "coral": ("coral", 1.0),
    "dann": ("dann", 1.0),
}


def build_pair(root: Path, *, seed: int) -> dict[str, Path]:
    """Write source/, target-train/ (unlabelled) and target-test/ (labelled) PNG folders."""
    from sklearn.datasets import load_digits, load_sample_images

    rng = np.random.default_rng(seed)
    bunch = load_digits()
    images = np.clip(bunch.images * (255.0 / 16.0), 0, 255)  # ink bright, paper black
    photos = [
        np.asarray(Image.fromarray(p).convert("L"), dtype=np.float64)
        for p in load_sample_images().images
    ]
    order = rng.permutation(len(images))
    half = len(order) // 2
    src_idx, tgt_idx = order[:half], order[half:]
    tgt_train, tgt_test = tgt_idx[: len(tgt_idx) // 2], tgt_idx[len(tgt_idx) // 2 :]

    def blend(img: np.ndarray) -> np.ndarray:
        photo = photos[int(rng.integers(len(photos)))]
        y = int(rng.integers(0, photo.shape[0] - 16))
        x = int(rng.integers(0, photo.shape[1] - 16))
        patch = Image.fromarray(photo[y : y + 16, x : x + 16].astype(np.uint8))
        small = np.asarray(patch.resize((8, 8), Image.BILINEAR), dtype=np.float64)
        return np.abs(small - img)

    def write(name: str, idx: np.ndarray, *, shifted: bool, labelled: bool) -> Path:
        folder = root / name
        for i in idx:
            label = int(bunch.target[i])
            pixels = blend(images[i]) if shifted else images[i]
            sub = folder / str(label) if labelled else folder
            sub.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.round(pixels).astype(np.uint8), mode="L").save(sub / f"{i:04d}.png")
        return folder

    return {
        "source": write("source", src_idx, shifted=False, labelled=True),
        "target_train": write("target-train", tgt_train, shifted=True, labelled=False),
        "target_test": write("target-test", tgt_test, shifted=True, labelled=True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    tuned_help = "tuned: a second run with this after the defaults"
    parser.add_argument("epochs", type=int, nargs="?", default=None, help=tuned_help)
    parser.add_argument("--lr", type=float, default=None, help=tuned_help)
    parser.add_argument("--batch-size", type=int, default=None, help=tuned_help)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()

    from headstart.api.adapt import adapt
    from headstart.config.options import AdaptOptions

    logging.basicConfig(level=logging.WARNING)
    seeds = [int(s) for s in args.seeds.split(",")]
    tuned = {
        k: v
        for k, v in (("lr", args.lr), ("batch_size", args.batch_size), ("epochs", args.epochs))
        if v is not None
    }
    settings_runs: list[dict[str, Any]] = [{}, tuned] if tuned else [{}]
    acc: dict[int, dict[str, list[float]]] = {}
    secs: dict[int, dict[str, list[float]]] = {}
    source_acc: dict[int, dict[str, list[float]]] = {}
    for i in range(len(settings_runs)):
        acc[i], secs[i], source_acc[i] = ({m: [] for m in METHODS} for _ in range(3))
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            pair = build_pair(Path(tmp) / f"pair{seed}", seed=seed)
            for i, settings in enumerate(settings_runs):
                for label, (method, coral_weight) in METHODS.items():
                    t0 = time.perf_counter()
                    result = adapt(
                        AdaptOptions(
                            data=str(pair["source"]),
                            target=str(pair["target_train"]),
                            eval=str(pair["target_test"]),
                            method=method,
                            coral_weight=coral_weight,
                            source="builtin:digits-cnn",
                            **settings,
                            seed=seed,
                            out=str(Path(tmp) / f"run{i}-{label}-{seed}"),
                            progress=False,
                        )
                    )
                    acc[i][label].append(round(float(result.metrics["target_acc"]), 4))
                    source_acc[i][label].append(round(float(result.metrics["train_acc"]), 4))
                    secs[i][label].append(round(time.perf_counter() - t0, 1))
    own = AdaptOptions()
    for i, settings in enumerate(settings_runs):
        a = acc[i]
        print(
            json.dumps(
                {
                    "bench": "adapt_digits",
                    "settings": settings_label(settings),
                    "epochs": settings.get("epochs", own.epochs),
                    "lr": settings.get("lr", own.lr),
                    "batch_size": settings.get("batch_size", own.batch_size),
                    "seeds": seeds,
                    "target_acc": a,
                    "target_acc_mean": {m: round(float(np.mean(v)), 4) for m, v in a.items()},
                    "dann_minus_source_only": [
                        round(x - y, 4) for x, y in zip(a["dann"], a["source-only"], strict=True)
                    ],
                    "coral_minus_source_only": [
                        round(x - y, 4) for x, y in zip(a["coral"], a["source-only"], strict=True)
                    ],
                    "dann_minus_shared_bn": [
                        round(x - y, 4) for x, y in zip(a["dann"], a["shared-bn"], strict=True)
                    ],
                    "source_train_acc": source_acc[i],
                    "seconds": secs[i],
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()

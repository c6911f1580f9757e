"""Does `headstart rank` order candidate sources as fine-tuning them does, and how cheaply?

Target: scikit-learn digits 5-9, PER_CLASS labelled images per class, one sample per
seed (`builtin:digits?classes=5-9&per_class=N&seed=S`).  Three candidates, all the same
architecture (`builtin:digits-cnn`), the two pre-trained ones with the recipe of
digits-cnn's own default weights (`headstart pretrain`, 15 epochs, label smoothing 0.1):

- MATCHED -- pre-trained on the target's own kind of data: all ten digit classes, every
  scikit-learn digit *except the target sample's images*
  (`builtin:digits?classes=0-9&per_class=N&seed=S&split=rest`, ~1750 images), made anew
  for each sample so no target image is ever in its pre-training;
- RANDOM -- `builtin:digits-cnn@none`, the same network randomly initialised;
- UNRELATED -- pre-trained on an unrelated task: which of scikit-learn's two sample
  photographs (a temple, a flower) an 8x8 grayscale patch comes from (600 patches):
  photographic texture and tone, nothing about pen strokes or digits.

Each sample runs `headstart rank DATA --sources MATCHED,RANDOM,UNRELATED --method all
--validate` with rank's own --validate defaults first (no --lr, --batch-size or
--epochs: what a user gets, `"settings": "defaults"`: the rate by the range test on each
fold, the batch sized from the fold, rank's 10 epochs raised to at least 50 optimizer
steps), then, only if any of those flags is given, again with them (`"settings":
"tuned: ..."`; `--lr 0.001 --batch-size 32` are the defaults of the figures measured
before the defaults were sized from the data), on the same sources.  Each records
each candidate's fine-tuned accuracy, each score, Kendall's tau per method (of the
order rank gives, the random-initialisation line included, and of the raw scores
alone), how many standard errors each pretrained source scores above RANDOM, and the
seconds spent scoring (forward pass + every score + the comparisons) against fine-tuning.
`--folds` is the measurement's cross-validation, the same in both.  The sources'
pre-training keeps digits-cnn's own recipe (`DIGITS_PRETRAIN`): it makes the
candidates, as headstart makes its default weights, and is not the training compared.
Prints one JSON line per settings on stdout (progress on stderr).

    OMP_NUM_THREADS=1 PYTHONPATH=src nice -n 10 .venv/bin/python bench/rank_validate.py \\
        [--per-class 20] [--seeds 0,1,2,3,4] [--folds K] [--lr LR --batch-size B --epochs E]
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

NAMES = ("MATCHED", "RANDOM", "UNRELATED")


def write_photo_patches(root: Path, *, per_class: int = 300, seed: int = 0) -> Path:
    """Random 32x32 crops of scikit-learn's sample photographs, downscaled to 8x8 gray."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    bunch = load_sample_images()
    for name, photo in zip(("china", "flower"), bunch.images, strict=True):
        gray = np.asarray(Image.fromarray(photo).convert("L"))
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            y = int(rng.integers(0, gray.shape[0] - 32))
            x = int(rng.integers(0, gray.shape[1] - 32))
            patch = Image.fromarray(gray[y : y + 32, x : x + 32]).resize((8, 8), Image.BILINEAR)
            patch.save(folder / f"{name}_{i:03d}.png")
    return root


def write_digits_m(root: Path, *, per_class: int, seed: int) -> tuple[Path, Path]:
    """The harder target: digits blended into patches of the sample photographs as MNIST-M
    is made from MNIST (`|patch - digit|` per pixel, as bench/adapt_digits.py does).

    Returns (target, matched): the target sample, digits 5-9, the same images that
    `builtin:digits?classes=5-9&per_class=N&seed=S` picks; and the matched source's
    pre-training set, every other digit of all ten classes, blended the same way.
    """
    from sklearn.datasets import load_digits, load_sample_images

    bunch = load_digits()
    images = np.clip(np.round(bunch.images * (255.0 / 16.0)), 0, 255)
    photos = [np.asarray(Image.fromarray(p).convert("L")) for p in load_sample_images().images]
    rng = np.random.default_rng([seed, 99])
    chosen: set[int] = set()
    for digit in range(10):
        members = np.flatnonzero(bunch.target == digit)
        # as builtin:digits picks a class's sample (headstart.data.images._load_digits)
        pick = np.random.default_rng([seed, digit]).choice(members, size=per_class, replace=False)
        if digit >= 5:
            chosen.update(int(i) for i in pick)
        else:  # the rest of 0-4 after the same draw, as split=rest leaves it
            chosen.update(-1 - int(i) for i in pick)
    target, matched = root / "target", root / "matched"
    for i in range(len(images)):
        photo = photos[int(rng.integers(len(photos)))]
        y = int(rng.integers(0, photo.shape[0] - 16))
        x = int(rng.integers(0, photo.shape[1] - 16))
        patch = Image.fromarray(photo[y : y + 16, x : x + 16])
        small = np.asarray(patch.resize((8, 8), Image.BILINEAR), dtype=np.float64)
        pixels = np.round(np.abs(small - images[i])).astype(np.uint8)
        label = int(bunch.target[i])
        if i in chosen:
            folder = target / str(label)
        elif -1 - i in chosen:
            continue  # 0-4's own draw: not in the target, left out of pre-training too
        else:
            folder = matched / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, mode="L").save(folder / f"{i:04d}.png")
    return target, matched


def pretrain_source(data: str, out: Path) -> Path:
    """`headstart pretrain DATA --source builtin:digits-cnn` with digits-cnn's own recipe."""
    from headstart.api.fit import pretrain
    from headstart.config.options import PretrainOptions
    from headstart.sources.builtin import DIGITS_PRETRAIN

    pretrain(
        PretrainOptions(
            data=data, source="builtin:digits-cnn", out=str(out), progress=False, **DIGITS_PRETRAIN
        )
    )
    return out


def summary(
    runs: list[dict[str, Any]], settings: dict[str, Any], head: dict[str, Any]
) -> dict[str, Any]:
    """One settings' line: every sample, and the taus and seconds over them."""
    from headstart.config.options import RankOptions

    taus = {m: [r["kendall_tau"][m] for r in runs] for m in runs[0]["kendall_tau"]}
    score_taus = {m: [r["score_tau"][m] for r in runs] for m in runs[0]["score_tau"]}
    scoring = sum(r["scoring_s"] for r in runs)
    finetune = sum(r["finetune_s"] for r in runs)
    scoring_cpu = sum(r["scoring_cpu_s"] for r in runs)
    finetune_cpu = sum(r["finetune_cpu_s"] for r in runs)
    return {
        "bench": "rank_validate",
        "settings": settings_label(settings),
        **head,
        "epochs": settings.get("epochs", RankOptions().epochs),
        "lr": settings.get("lr", "auto"),
        "batch_size": settings.get("batch_size", "auto"),
        "runs": runs,
        "tau": taus,
        "mean_tau": {
            m: None if None in t else round(float(np.mean(t)), 3) for m, t in taus.items()
        },
        "tau_is_1": {m: sum(x == 1.0 for x in t) for m, t in taus.items()},
        "score_tau": score_taus,
        "score_tau_is_1": {m: sum(x == 1.0 for x in t) for m, t in score_taus.items()},
        "accuracy_order_as_named": sum(
            r["accuracy"]["MATCHED"] > r["accuracy"]["RANDOM"] > r["accuracy"]["UNRELATED"]
            for r in runs
        ),
        "scoring_s": round(scoring, 2),
        "finetune_s": round(finetune, 1),
        "ratio": round(scoring / finetune, 4),
        "max_ratio": max(r["ratio"] for r in runs),
        "cpu_ratio": round(scoring_cpu / finetune_cpu, 4),
        "max_cpu_ratio": max(r["cpu_ratio"] for r in runs),
    }


def main() -> None:
    from headstart.choose.rank import rank_sources
    from headstart.config.options import RankOptions

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument(
        "--target",
        choices=("digits", "digits-m"),
        default="digits",
        help="digits: scikit-learn's digits 5-9; digits-m: the same digits blended into "
        "photo patches (harder), the matched source pre-trained on other blended digits",
    )
    parser.add_argument("--folds", type=int, default=RankOptions().folds)
    tuned_help = "tuned: a second run with this after the defaults"
    parser.add_argument("--epochs", type=int, default=None, help=tuned_help)
    parser.add_argument("--lr", type=float, default=None, help=tuned_help)
    parser.add_argument("--batch-size", type=int, default=None, help=tuned_help)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    seeds = [int(s) for s in args.seeds.split(",")]
    tuned = {
        k: v
        for k, v in (("lr", args.lr), ("batch_size", args.batch_size), ("epochs", args.epochs))
        if v is not None
    }
    settings_runs: list[dict[str, Any]] = [{}, tuned] if tuned else [{}]

    runs: dict[str, list[dict[str, Any]]] = {settings_label(s): [] for s in settings_runs}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        unrelated = pretrain_source(
            str(write_photo_patches(Path(tmp) / "patches")), Path(tmp) / "unrelated"
        )
        unrelated_s = time.perf_counter() - t0
        for seed in seeds:
            sample = f"classes=5-9&per_class={args.per_class}&seed={seed}"
            data = f"builtin:digits?{sample}"
            pretrain_data = (
                f"builtin:digits?classes=0-9&per_class={args.per_class}&seed={seed}&split=rest"
            )
            if args.target == "digits-m":
                target_dir, matched_dir = write_digits_m(
                    Path(tmp) / f"digits-m-{seed}", per_class=args.per_class, seed=seed
                )
                data, pretrain_data = str(target_dir), str(matched_dir)
            t0 = time.perf_counter()
            matched = pretrain_source(pretrain_data, Path(tmp) / f"matched-{seed}")
            matched_s = time.perf_counter() - t0
            specs = [f"file:{matched}", "builtin:digits-cnn@none", f"file:{unrelated}"]
            name_of = dict(zip(specs, NAMES, strict=True))
            for settings in settings_runs:
                t0 = time.perf_counter()
                result = rank_sources(
                    RankOptions(
                        data=data,
                        sources=",".join(specs),
                        method="all",
                        validate=True,
                        **settings,
                        folds=args.folds,
                        seed=seed,
                        progress=False,
                    )
                )
                v = result.validation or {}
                by = {name_of[c.candidate]: c for c in result.candidates}
                run = {
                    "settings": settings_label(settings),
                    "data": f"digits-m?{sample}" if args.target == "digits-m" else data,
                    "epochs_trained": v["epochs"],
                    "order_by_logme": [name_of[c.candidate] for c in result.candidates],
                    "accuracy": {n: round(by[n].accuracy or 0.0, 4) for n in NAMES},
                    "fold_accuracies": {
                        n: [round(a, 4) for a in by[n].fold_accuracies] for n in NAMES
                    },
                    "scores": {
                        n: {
                            m: None if s.value is None else round(s.value, 4)
                            for m, s in by[n].scores.items()
                        }
                        for n in NAMES
                    },
                    "kendall_tau": {m: t["tau"] for m, t in v["kendall_tau"].items()},
                    "score_tau": {m: t["score_tau"] for m, t in v["kendall_tau"].items()},
                    # each pretrained candidate's score minus RANDOM's, in standard errors
                    "z_vs_random": {
                        n: {
                            m: None if c is None or c.z is None else round(c.z, 2)
                            for m, c in by[n].vs_random.items()
                        }
                        for n in ("MATCHED", "UNRELATED")
                    },
                    "scoring_s": round(v["scoring_s"], 2),
                    "finetune_s": round(v["finetune_s"], 1),
                    "ratio": round(v["ratio"], 4),
                    "scoring_cpu_s": round(v["scoring_cpu_s"], 2),
                    "finetune_cpu_s": round(v["finetune_cpu_s"], 1),
                    "cpu_ratio": round(v["cpu_ratio"], 4),
                    "matched_pretrain_s": round(matched_s, 1),
                    "rank_wall_s": round(time.perf_counter() - t0, 1),
                }
                print(f"# {json.dumps(run)}", file=sys.stderr, flush=True)
                runs[run["settings"]].append(run)
    head = {
        "target": args.target,
        "per_class": args.per_class,
        "folds": args.folds,
        "seeds": seeds,
        "unrelated_pretrain_s": round(unrelated_s, 1),
    }
    for settings in settings_runs:
        print(json.dumps(summary(runs[settings_label(settings)], settings, head)), flush=True)


if __name__ == "__main__":
    main()

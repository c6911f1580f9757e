"""Does `headstart rank` order candidate sources as fine-tuning them does, and how cheaply?

Target: scikit-learn digits 5-9, 20 (or PER_CLASS) labelled images per class
(`per_class` sampling seeds 0, 1, 2).  Candidates, all the same architecture (builtin:digits-cnn):

- `builtin:digits-cnn` -- its default weights, pre-trained on digits 0-4: a well-matched
  source (same pen strokes, same 8x8 scans, different classes);
- `builtin:digits-cnn@none` -- the same network randomly initialised;
- `file:RUN` -- the network pre-trained (`headstart pretrain`) on an unrelated task:
  telling 8x8 grayscale patches of scikit-learn's two sample photographs (a temple in
  China, a flower) apart, i.e. photographic texture and tone, nothing about strokes.

For each target sample: `rank --method all --validate --lr 3e-3` (full fine-tuning, the default
backbone lr x0.1, 30 epochs, 3 stratified folds, last epoch scored on the held-out fold),
Kendall's tau between each score and the fine-tuned accuracy, and the seconds spent
scoring (one forward pass + each score) against fine-tuning.  Prints one JSON line.

    OMP_NUM_THREADS=1 PYTHONPATH=src nice -n 10 \\
        .venv/bin/python bench/rank_validate.py [EPOCHS [PER_CLASS]]
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


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


def main() -> None:
    from headstart.api import PretrainOptions, pretrain
    from headstart.options import RankOptions
    from headstart.ranking import rank_sources

    logging.basicConfig(level=logging.WARNING)
    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    per_class = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    seeds = [0, 1, 2]
    with tempfile.TemporaryDirectory() as tmp:
        patches = write_photo_patches(Path(tmp) / "patches")
        unrelated = Path(tmp) / "unrelated"
        pretrain(
            PretrainOptions(
                data=str(patches),
                source="builtin:digits-cnn",
                out=str(unrelated),
                epochs=10,
                progress=False,
            )
        )
        runs = []
        for seed in seeds:
            data = f"builtin:digits?classes=5-9&per_class={per_class}&seed={seed}"
            t0 = time.perf_counter()
            result = rank_sources(
                RankOptions(
                    data=data,
                    sources=f"builtin:digits-cnn,builtin:digits-cnn@none,file:{unrelated}",
                    method="all",
                    validate=True,
                    epochs=epochs,
                    lr=3e-3,
                    folds=3,
                    seed=seed,
                    progress=False,
                )
            )
            v = result.validation or {}
            runs.append(
                {
                    "data": data,
                    "order_by_logme": [
                        c.candidate.replace(str(unrelated), "UNRELATED") for c in result.candidates
                    ],
                    "accuracy": {
                        c.candidate.replace(str(unrelated), "UNRELATED"): round(c.accuracy or 0, 4)
                        for c in result.candidates
                    },
                    "scores": {
                        c.candidate.replace(str(unrelated), "UNRELATED"): {
                            m: None if s.value is None else round(s.value, 4)
                            for m, s in c.scores.items()
                        }
                        for c in result.candidates
                    },
                    "kendall_tau": {m: t["tau"] for m, t in v["kendall_tau"].items()},
                    "scoring_s": round(v["scoring_s"], 2),
                    "finetune_s": round(v["finetune_s"], 1),
                    "ratio": round(v["ratio"], 4),
                    "wall_s": round(time.perf_counter() - t0, 1),
                }
            )
    taus = {m: [r["kendall_tau"][m] for r in runs] for m in runs[0]["kendall_tau"]}
    print(
        json.dumps(
            {
                "bench": "rank_validate",
                "epochs": epochs,
                "per_class": per_class,
                "runs": runs,
                "mean_tau": {
                    m: None if None in t else round(float(np.mean(t)), 3) for m, t in taus.items()
                },
                "scoring_s": round(sum(r["scoring_s"] for r in runs), 2),
                "finetune_s": round(sum(r["finetune_s"] for r in runs), 1),
                "ratio": round(
                    sum(r["scoring_s"] for r in runs) / sum(r["finetune_s"] for r in runs), 4
                ),
            }
        )
    )


if __name__ == "__main__":
    main()

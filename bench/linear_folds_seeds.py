"""The linear head's C by LogisticRegressionCV's folds (unshuffled, the default) against
shuffled folds (seed 0), over seeds of one setting: digits 5-9 on builtin:digits-cnn's
features (``headstart embed``), PER labelled images per class drawn with each seed, the
rest of digits 5-9 for the test; LogisticRegressionCV with its defaults beside them.  One
line per seed (unshuffled, shuffled, LogisticRegressionCV), then the means::

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/linear_folds_seeds.py PER SEEDS
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np


def embedded(hs: str, spec: str, out: Path) -> tuple[np.ndarray, np.ndarray]:
    subprocess.run([hs, "embed", spec, "--out", str(out), "--overwrite", "-q"], check=True)
    with np.load(out) as f:
        return f["features"], f["labels"]


def accuracy(solution: Any, x: np.ndarray, y: np.ndarray) -> float:
    logits = x @ solution.weight.numpy().T + solution.bias.numpy()
    return float((logits.argmax(1) == y).mean())


def main() -> None:
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from headstart.train.head_solver import solve_head

    warnings.simplefilter("ignore")  # LogisticRegressionCV's FutureWarnings
    per, seeds = int(sys.argv[1]), int(sys.argv[2])
    hs = str(Path(sys.executable).parent / "headstart")
    rows = []
    with tempfile.TemporaryDirectory(prefix="linear-folds-") as tmp:
        for s in range(seeds):
            spec = f"builtin:digits?classes=5-9&per_class={per}&seed={s}"
            x, y = embedded(hs, spec, Path(tmp) / "train.npz")
            xt, yt = embedded(hs, spec + "&split=rest", Path(tmp) / "test.npz")
            lrcv = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=10, max_iter=5000))
            row = (
                accuracy(solve_head(x, y, 5), xt, yt),
                accuracy(solve_head(x, y, 5, seed=0), xt, yt),
                float((lrcv.fit(x, y).predict(xt) == yt).mean()),
            )
            rows.append(row)
            print(s, *(f"{a:.4f}" for a in row), flush=True)
    means = np.mean(rows, axis=0)
    print(f"mean unshuffled {means[0]:.4f} shuffled {means[1]:.4f} lrcv {means[2]:.4f}")


if __name__ == "__main__":
    main()

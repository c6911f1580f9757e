"""`fit --trials-in-parallel 1` against `2`: the wall time of `--strategy auto`'s race and of
the whole fit, and whether the race's numbers are the same (#19 items 2-3).

Each DATA is fitted with no training flag (auto races on small data) in a child process,
the two settings back to back, ``--repeats`` times in alternating order; the race's own
clock is ``total_s`` of its record in headstart.json.  One JSON line per pair, then one
per data set with the medians::

    OMP_NUM_THREADS=1 .venv/bin/python bench/race_workers.py DATA[=SOURCE] ...

``OMP_NUM_THREADS=1`` gives every fit one thread whether it runs alone or beside
another, so the numbers can be the same (another thread count adds up in another order).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def fit(hs: str, data: str, source: str, out: Path, workers: int) -> dict[str, Any]:
    argv = [hs, "fit", data, "--source", source, "--out", str(out), "-q"]
    argv += ["--trials-in-parallel", str(workers)]
    t0 = time.perf_counter()
    subprocess.run(argv, check=True)
    wall = time.perf_counter() - t0
    race = json.loads((out / "headstart.json").read_text())["recommendation"]["race"]
    return {
        "workers": workers,
        "wall_s": round(wall, 2),
        "race_s": round(race.get("total_s", 0.0), 2),
        "winner": race.get("winner"),
        "scores": {c["label"]: [round(a, 6) for a in c["accuracies"]] for c in race["candidates"]},
        "losses": {c["label"]: c["losses"] for c in race["candidates"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", nargs="+", help="DATA or DATA=SOURCE (default builtin:digits-cnn)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--headstart", default=str(Path(sys.executable).parent / "headstart"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for n, item in enumerate(args.data):
            data, _, source = item.partition("=")
            source = source or "builtin:digits-cnn"
            runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
            for r in range(args.repeats):
                for w in (1, 2) if r % 2 == 0 else (2, 1):
                    row = fit(args.headstart, data, source, Path(tmp) / f"{n}-{r}-{w}", w)
                    runs[w].append(row)
                    print(json.dumps({"data": data, "repeat": r, **row}), flush=True)
            med = {w: {k: statistics.median(x[k] for x in v) for k in ("wall_s", "race_s")}
                   for w, v in runs.items()}  # fmt: skip
            same = all(
                (a["winner"], a["scores"], a["losses"]) == (b["winner"], b["scores"], b["losses"])
                for a in runs[1]
                for b in runs[2]
            )
            print(
                json.dumps(
                    {
                        "data": data,
                        "source": source,
                        "median": med,
                        "race_speedup": round(med[1]["race_s"] / med[2]["race_s"], 2),
                        "fit_speedup": round(med[1]["wall_s"] / med[2]["wall_s"], 2),
                        "same_numbers": same,
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()

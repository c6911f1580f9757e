"""The README's cheap timed examples, re-run: each figure with the machine and the load.

README.md quotes wall times (the demo's, the digits ``compare``'s) and what a fixed budget
scored against fit's defaults (``budget``). A time means little without the machine and
what else ran on it, so each figure is printed as one JSON line with the command that
produced it, the machine (CPU count, the CPU model from /proc/cpuinfo, torch's intra-op
threads) and the 1/5/15-minute load averages before and after. Figures the script cannot
re-measure cheaply (the first install, ``make test``, the benches in bench/RESULTS.md)
are printed as ``not_remeasured`` lines saying where they come from.

    PYTHONPATH=src nice -n 10 .venv/bin/python bench/readme_figures.py [--only demo,compare,budget]

Children run with ``OMP_NUM_THREADS=1`` unless it is set (bench/README.md says why).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

# The demo's pre-trained source, as README's compare example uses it; the demo is run
# first into OUT/demo, so the compare example reads OUT/demo/pretrain-digits0-4.
COMPARE_ARGS = [
    "compare",
    "builtin:digits?classes=5-9&per_class=20",
    "--source",
    "file:{out}/demo/pretrain-digits0-4",
    "--strategies",
    "linear,full,scratch",
    "--folds",
    "3",
    "--label-fractions",
    "0.25,0.5,1",
    "--lr",
    "1e-2",
    "--epochs",
    "15",
]

# README's "Defaults sized from the data": the fixed defaults of old against no flag, on
# digits 5-9 with 20 labels per class, each scored on the held-out digits.
BUDGET_DATA = "builtin:digits?classes=5-9&per_class=20"
BUDGET_FITS = {
    "fixed": ["--epochs", "10", "--batch-size", "32", "--lr", "1e-3"],
    "defaults": [],
}

# Figures README.md quotes that this script does not re-run, and where each comes from.
NOT_REMEASURED = [
    {
        "figure": "first install: about 3 minutes",
        "source": "measured once, 2026-11-23 (commit 1ab296f), on a fresh clone; "
        "it depends on the network and the package index, so no script re-measures it",
    },
    {
        "figure": "make test: about 6 minutes",
        "source": "measured once, 2026-12-04 (commit bef3aa5): CI=true .ci/run on a clean "
        "clone, 370 s of pytest on 2 cores, OMP_NUM_THREADS=1",
    },
    {
        "figure": "bench/auto_vs_best.py: ~8 min; the speed and accuracy figures",
        "source": "bench/RESULTS.md (each with its command, machine and load)",
    },
]


def machine() -> dict[str, Any]:
    """CPU count, the CPU model and torch's intra-op threads (what the children get)."""
    import torch

    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model,
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def timed(name: str, argv: list[str], cwd: Path, host: dict[str, Any]) -> dict[str, Any]:
    """Run ``argv`` once: its wall time, exit status, the tail of its output (stdout and
    stderr: the demo's table, compare's), the machine and the load."""
    before = load()
    t0 = time.perf_counter()
    done = subprocess.run(
        argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
    )
    seconds = time.perf_counter() - t0
    return {
        "figure": name,
        "command": " ".join(argv[2:] if argv[:2] == [sys.executable, "-m"] else argv),
        "seconds": round(seconds, 1),
        "returncode": done.returncode,
        "load_before": before,
        "load_after": load(),
        "machine": host,
        "output_tail": done.stdout.strip().splitlines()[-15:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default="demo,compare,budget", help="comma-separated: demo,compare,budget"
    )
    parser.add_argument("--out", default=None, help="folder for the runs (default: a temp dir)")
    args = parser.parse_args()
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    host = machine()
    with tempfile.TemporaryDirectory(prefix="readme-figures-") as tmp:
        out = Path(args.out or tmp).resolve()
        out.mkdir(parents=True, exist_ok=True)
        py = [sys.executable, "-m"]
        if only & {"demo", "compare"}:
            # compare reads the demo's pre-trained source, so the demo runs for either
            demo = timed(
                "demo",
                [*py, "headstart.cli.demo", "--out", str(out / "demo")],
                out,
                host,
            )
            print(json.dumps(demo), flush=True)
        if "compare" in only:
            argv = [a.format(out=out) for a in COMPARE_ARGS]
            argv += ["--out", str(out / "compare")]
            result = timed("compare", [*py, "headstart", *argv], out, host)
            # the label-fraction scores README quotes are in compare.csv, not the table
            csv = out / "compare" / "compare.csv"
            result["compare_csv"] = csv.read_text().splitlines() if csv.is_file() else []
            print(json.dumps(result), flush=True)
        if "budget" in only:
            for label, flags in BUDGET_FITS.items():
                run = out / f"budget-{label}"
                argv = ["fit", BUDGET_DATA, "--strategy", "full", *flags, "--out", str(run)]
                result = timed(f"budget: {label}", [*py, "headstart", *argv], out, host)
                scored = subprocess.run(
                    [*py, "headstart", "evaluate", str(run), BUDGET_DATA + "&split=rest", "--json"],
                    cwd=out,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                try:
                    report = json.loads(scored.stdout)
                    keep = ("accuracy", "macro_f1", "n_items")
                    result["held_out"] = {k: report[k] for k in keep}
                except (ValueError, KeyError):
                    result["held_out"] = {"error": scored.stderr.strip().splitlines()[-3:]}
                print(json.dumps(result), flush=True)
    for line in NOT_REMEASURED:
        print(json.dumps({**line, "not_remeasured": True}), flush=True)


if __name__ == "__main__":
    main()

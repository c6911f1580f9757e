"""``make demo``: what pre-training buys on the built-in digits, end to end, on a CPU.

1. Pre-train ``builtin:digits-cnn`` from scratch on digits 0-4 (the *source* task).
2. Before any fine-tuning, ``headstart rank`` the source against the same network at
   random on the first seed's labelled images: does it clear the random-initialisation
   line?
3. Fine-tune on digits 5-9 with only 5 labels per class (the *target* task) with
   ``linear``, ``full`` and ``scratch``, over 3 seeds (each seed draws other labels),
   each with fit's defaults and nothing else: the batch, the epochs and the learning
   rate are sized from the data, as a user who passes no flag gets them.
4. Score every run on the held-out digits 5-9 and print mean accuracy +- std, with
   rank's verdict from step 2 beneath.

Run it with ``python -m headstart.cli.demo [--out runs/demo] [--seeds 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from headstart._progress import bar, inner, write
from headstart.api.fit import fit, pretrain
from headstart.api.predict import evaluate
from headstart.cli.output import setup_logging
from headstart.config.options import FitOptions, PretrainOptions
from headstart.sources.builtin import DIGITS_PRETRAIN

TARGET = "builtin:digits?classes=5-9&per_class={per_class}&seed={seed}"


STRATEGIES = ("linear", "full", "scratch")


@dataclass
class DemoResult:
    """One row per (strategy, seed), and what ``rank`` said of the source beforehand."""

    rows: list[dict[str, object]] = field(default_factory=list)
    verdict: str = ""


def rank_verdict(source_dir: Path, data: str, *, seed: int = 0) -> str:
    """``headstart rank DATA --sources file:SOURCE_DIR --method knn,logme`` (the
    random-initialisation reference added), as one line: where rank puts the source
    against the same network at random, by its first score, and any score that
    disagrees."""
    from headstart.choose.rank import rank_sources
    from headstart.config.options import RankOptions

    result = rank_sources(
        RankOptions(
            data=data,
            sources=f"file:{source_dir}",
            method="knn,logme",
            seed=seed,
            progress=False,
        )
    )
    (source,) = [c for c in result.candidates if not c.reference]
    first, *others = result.methods
    line = source.vs_random.get(first)
    if line is None:
        return "rank: no random-initialisation line to compare the source with"
    where = "above" if line.above else "below"
    expect = (
        "a head start over training from scratch"
        if line.above
        else "no head start over training from scratch (negative transfer at worst)"
    )
    said = (
        f"before fine-tuning, `headstart rank` on seed {seed}'s {result.n_items} labelled "
        f"images ranks the source {where} the same network at random init by {first}, its "
        f"first score ({line.difference:+.3f} +- {line.se:.3f}): it expects {expect}"
    )
    for method in others:
        other = source.vs_random.get(method)
        if other is not None and other.above != line.above:
            said += (
                f"; {method} disagrees ({other.difference:+.3f} +- {other.se:.3f}, "
                f"{'clearly above' if other.above else 'not clearly above'})"
            )
    return said


def run_demo(
    out: Path, *, seeds: int = 3, per_class: int = 5, epochs: int | None = None
) -> DemoResult:
    """Run the demo: one row per (strategy, seed), and rank's verdict on the source.

    Each fit takes fit's defaults; ``epochs`` only shortens a test of the demo itself."""
    write("pre-training builtin:digits-cnn on digits 0-4 (the source task)")
    with inner("pre-training on digits 0-4"):  # the runs' own plans and epochs: -v only
        source_run = pretrain(
            PretrainOptions(
                data="builtin:digits?classes=0-4",
                source="builtin:digits-cnn",
                out=str(out / "pretrain-digits0-4"),
                overwrite=True,
                **DIGITS_PRETRAIN,
            )
        )
    write(
        f"pre-trained builtin:digits-cnn on digits 0-4: validation accuracy "
        f"{source_run.metrics['val_acc']:.3f} ({source_run.timings['total_s']:.1f}s)"
    )
    demo = DemoResult()
    with inner():  # said once, beneath the table
        demo.verdict = rank_verdict(
            source_run.run_dir, TARGET.format(per_class=per_class, seed=0), seed=0
        )
    rows = demo.rows
    runs = [(seed, strategy) for seed in range(seeds) for strategy in STRATEGIES]
    for seed, strategy in bar(runs, desc="fine-tuning on digits 5-9"):
        train_spec = TARGET.format(per_class=per_class, seed=seed)
        held_out = train_spec + "&split=rest"
        t0 = time.perf_counter()
        with inner():
            result = fit(
                FitOptions(
                    data=train_spec,
                    source=f"file:{source_run.run_dir}",
                    strategy=strategy,
                    epochs=epochs,
                    seed=seed,
                    out=str(out / f"{strategy}-seed{seed}"),
                    overwrite=True,
                    progress=False,
                )
            )
        seconds = time.perf_counter() - t0
        scored = evaluate(result.run_dir, held_out)
        rows.append(
            {
                "strategy": strategy,
                "seed": seed,
                "accuracy": scored.accuracy,
                "seconds": seconds,
                "run_dir": str(result.run_dir),
            }
        )
        write(f"  seed {seed} {strategy:<8} accuracy {scored.accuracy:.3f} ({seconds:.1f}s)")
    return demo


def format_table(rows: Sequence[dict[str, object]], *, per_class: int, verdict: str = "") -> str:
    lines = [
        f"digits 5-9, {per_class} labels per class, source pre-trained on digits 0-4; "
        "accuracy on the held-out digits 5-9",
        "",
        f"{'strategy':<10} {'accuracy (mean +- std)':>24} {'seconds':>9}  runs",
    ]
    for strategy in STRATEGIES:
        mine = [r for r in rows if r["strategy"] == strategy]
        accs = [float(r["accuracy"]) for r in mine]  # type: ignore[arg-type]
        secs = [float(r["seconds"]) for r in mine]  # type: ignore[arg-type]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        dirs = ", ".join(str(r["run_dir"]) for r in mine)
        lines.append(
            f"{strategy:<10} {statistics.mean(accs):>15.3f} +- {std:.3f} "
            f"{statistics.mean(secs):>9.1f}  {dirs}"
        )
    if verdict:
        lines += ["", verdict]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m headstart.cli.demo", description=__doc__)
    parser.add_argument("--out", default="runs/demo", help="folder for the run dirs")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=5)
    args = parser.parse_args(argv)
    setup_logging()  # headstart's one voice: stderr, bars on a terminal, warnings once
    t0 = time.perf_counter()
    demo = run_demo(Path(args.out), seeds=args.seeds, per_class=args.per_class)
    write(format_table(demo.rows, per_class=args.per_class, verdict=demo.verdict))
    write(f"\ndemo finished in {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

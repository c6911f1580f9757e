"""``headstart lr-find``: the learning-rate range test alone, as ``fit --lr auto`` runs it.

It builds exactly what ``fit`` would train (the source, the plan, the budget, the
loaders: cached features where the backbone is frozen) on the same training part, runs
the sweep, and writes the curve (``lr_find.png``) and its numbers (``lr_find.json``)
without training.  A frozen backbone's head is solved by ``fit`` and needs no rate; the
curve is then the one ``fit --no-solve-head`` would use.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headstart._io import atomic_write_json
from headstart.config.options import LrFindOptions
from headstart.rundir import input_paths, prepare_out, writing
from headstart.train.assemble import (
    _default_out,
    _split,
    check_options,
    load_training_data,
    prepare,
)
from headstart.train.auto import RANDOM_WEIGHTS_LR, random_weights
from headstart.train.budget import Budget
from headstart.train.lr_find import LrCurve, plot_lr_curve

__all__ = ["LrFindResult", "lr_find"]


@dataclass
class LrFindResult:
    curve: LrCurve
    strategy: str
    budget: Budget
    solved: bool  # fit solves this head and needs no rate
    out_dir: Path
    seconds: float
    fixed_by_fit: float | None = None  # random weights: fit takes this rate, not the curve's

    def summary(self) -> dict[str, Any]:
        return {
            "lr": self.curve.suggestion,
            "rule": self.curve.rule,
            "strategy": self.strategy,
            "solved_by_fit": self.solved,
            "fixed_by_fit": self.fixed_by_fit,
            "budget": self.budget.to_dict(),
            "out_dir": str(self.out_dir),
            "plot": str(self.out_dir / "lr_find.png"),
            "seconds": self.seconds,
            "curve": self.curve.to_dict(),
        }

    def describe(self) -> str:
        note = (
            " (fit solves this head on the frozen features and needs no rate; this is the "
            "rate for --no-solve-head)"
            if self.solved
            else ""
        )
        if self.fixed_by_fit is not None:
            note = (
                f" (random weights: fit --lr auto does not read this curve and trains at "
                f"{self.fixed_by_fit:g}, AdamW's usual rate; pass --lr to use this one)"
            )
        return (
            f"learning rate {self.curve.suggestion:.3g}: {self.curve.rule} of a "
            f"{self.curve.steps}-step range test ({self.curve.seconds:.1f}s){note}\n"
            f"curve: {self.out_dir / 'lr_find.png'}"
        )


def lr_find(options: LrFindOptions) -> LrFindResult:
    """Run the range test ``fit`` would run on ``options.data`` and write its curve."""
    out = options.out or _default_out("lr-find")
    options = options.replace(out=out)
    with writing(out, inputs=input_paths(options)):
        return _lr_find(options)


def _lr_find(options: LrFindOptions) -> LrFindResult:
    t0 = time.perf_counter()
    fit_options = options.fit_options()
    check_options(fit_options)
    data = load_training_data(fit_options)
    train_data, val_data = _split(fit_options, data)
    out = prepare_out(
        options.out or _default_out("lr-find"),
        overwrite=options.overwrite,
        inputs=input_paths(options),
        marker="lr_find.json",
        what="lr-find output",
    )
    run = prepare(fit_options, train_data, val_data, parallel=None, sweep=True)
    assert run.lr_curve is not None
    title = f"{run.source.spec} · {run.plan.strategy} · {options.data}"
    plot_lr_curve(run.lr_curve, out / "lr_find.png", title=title)
    seconds = time.perf_counter() - t0
    fixed = RANDOM_WEIGHTS_LR if random_weights(run.plan, run.source) and not run.solved else None
    result = LrFindResult(
        run.lr_curve, str(run.plan.strategy), run.budget, run.solved, out, seconds, fixed
    )
    atomic_write_json(out / "lr_find.json", result.summary())
    return result

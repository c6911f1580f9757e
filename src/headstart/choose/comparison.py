"""A comparison's results: the fold scores, their summary per strategy (mean, spread, a
t interval), and what ``compare`` prints and writes of them (the table, ``compare.csv``,
``compare.md``/``.html``, ``compare.json``, the plots).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart._io import atomic_write_json, atomic_write_text
from headstart.choose.html import write_html_page
from headstart.choose.plots import plot_folds, plot_lines
from headstart.choose.report import benefits, benefits_table, check_lines
from headstart.config.options import CompareOptions
from headstart.config.strategies import reinitialises

__all__ = [
    "CompareResult",
    "FoldScore",
    "StrategySummary",
    "augmentation_line",
    "auto_choices",
    "format_table",
    "mean_curves",
    "run_config",
    "summarise",
    "tally",
    "write_comparison",
]

log = logging.getLogger(__name__)


def tally(chosen: Sequence[str]) -> str:
    """``"full (x0.1) in 2 of 3, partial:2 (x0.1) in 1 of 3"``, in order of first choice."""
    counts = {c: list(chosen).count(c) for c in dict.fromkeys(chosen)}
    return ", ".join(f"{c} in {n} of {len(chosen)}" for c, n in counts.items())


def auto_choices(summary: list[StrategySummary]) -> list[str]:
    """One line per strategy that chose per fold (auto): what it picked, fold by fold."""
    lines = []
    for s in summary:
        if s.chosen:
            tallied = tally(s.chosen)
            # fold by fold while that reads at a glance; the tally alone beyond
            listed = f"{'; '.join(s.chosen)} ({tallied})" if len(s.chosen) <= 6 else tallied
            lines.append(
                f"{s.strategy} chose per fold: {listed}; measured on each fold's training part only"
            )
    return lines


def augmentation_line(summary: list[StrategySummary]) -> list[str]:
    """Which training augmentation each strategy's folds got (--augment auto differs)."""
    used = [f"{s.strategy} {s.augment}" for s in summary if s.augment]
    return [f"training augmentation: {', '.join(used)}"] if used else []


def format_table(summary: list[StrategySummary]) -> str:
    """The summary as printed, best first: accuracy, macro-F1, the paired difference from
    the best with its 95% interval, seconds per fold; then what auto chose, if any."""
    best = summary[0].strategy
    lines = [
        f"{'strategy':<12} {'accuracy':>17} {'macro-F1':>9} {'vs ' + best:>26} {'s/fold':>7}",
    ]
    for s in summary:
        vs = (
            "best"
            if s.strategy == best
            else (f"{s.diff_vs_best:+.3f} [{s.ci_low:+.3f}, {s.ci_high:+.3f}]")
        )
        lines.append(
            f"{s.strategy:<12} {s.mean:>8.3f} +- {s.std:.3f} {s.f1_mean:>9.3f} {vs:>26} "
            f"{s.seconds:>7.1f}"
        )
    return "\n".join(lines + auto_choices(summary) + augmentation_line(summary))


def _markdown(result: CompareResult, options: CompareOptions) -> str:
    best = result.best
    lines = [
        f"# headstart compare: {options.source} on {options.data}",
        "",
        f"{options.folds}-fold stratified cross-validation x {options.seeds} repeat(s), the "
        f"same folds for every strategy, {options.epochs} epochs each, scored on the held-out "
        "fold after the last epoch. Differences are paired (fold by fold) against the best, "
        "with a 95% interval from the corrected resampled t-test (Nadeau & Bengio, 2003).",
        "",
        f"| strategy | accuracy (mean ± std) | macro-F1 | difference vs {best} [95% CI] "
        "| seconds per fold |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for s in result.summary:
        vs = (
            "best"
            if s.strategy == best
            else (f"{s.diff_vs_best:+.3f} [{s.ci_low:+.3f}, {s.ci_high:+.3f}]")
        )
        lines.append(
            f"| `{s.strategy}` | {s.mean:.3f} ± {s.std:.3f} | {s.f1_mean:.3f} | {vs} | "
            f"{s.seconds:.1f} |"
        )
    lines += [
        "",
        *[f"- {line}" for line in auto_choices(result.summary) + augmentation_line(result.summary)],
    ]
    lines += ["", _verdict(result), ""]
    checked = check_lines(result.data_checks)
    if checked:
        lines += ["## Data checks", "", *checked, ""]
    curves = mean_curves(result)
    named = [(name, benefits(mean)) for name, (mean, _) in curves.items()]
    baseline = next((name for name in curves if reinitialises(name)), None)
    lines += [
        "## The three benefits of transfer",
        "",
        "From the mean held-out accuracy per epoch: *start* is the accuracy after the first "
        "epoch, *slope* the epochs needed to reach 90% of the best and the mean over the "
        "first 3 epochs, *asymptote* the best accuracy"
        + (" (in brackets: the gain over scratch)." if baseline else "."),
        "",
        *benefits_table(named, baseline=baseline),
        "",
        "![accuracy per fold](compare.png)",
        "",
        "![held-out accuracy per epoch](curves.png)",
        "",
    ]
    if any(r.fraction < 1.0 for r in result.scores):
        lines += [_labels_table(result), "", "![accuracy against labels](labels.png)", ""]
    return "\n".join(lines)


def _labels_table(result: CompareResult) -> str:
    fractions = sorted({r.fraction for r in result.scores})
    names = [s.strategy for s in result.summary]
    per_class = [
        np.mean([r.labels_per_class for r in result.scores if r.fraction == f]) for f in fractions
    ]
    lines = [
        "## Accuracy against labels per class",
        "",
        "| strategy | " + " | ".join(f"{p:.1f} labels/class" for p in per_class) + " |",
        "| --- |" + " ---: |" * len(fractions),
    ]
    for name in names:
        cells = [_mean_accuracy(result, name, f) for f in fractions]
        lines.append(f"| `{name}` | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines)


def _verdict(result: CompareResult) -> str:
    best = result.summary[0]
    tied = [s.strategy for s in result.summary[1:] if s.ci_high >= 0]
    text = f"**{best.strategy}** has the highest mean accuracy ({best.mean:.3f})."
    if tied:
        text += (
            f" It is not clearly better than {', '.join(tied)}: their intervals include 0, "
            "so more folds, seeds or data would be needed to separate them."
        )
    if reinitialises(best.strategy) and len(result.summary) > 1:
        if not tied:
            text += (
                " Every use of the pretrained source is clearly worse than training from "
                "scratch: this source does not transfer to this data (negative transfer)."
            )
        else:
            text += (
                " The pretrained source gives no measurable head start over training from "
                "scratch with this much data."
            )
    return text


def _plots(result: CompareResult, folder: Path) -> None:
    """``compare.png`` (each fold's accuracy), ``curves.png`` (accuracy per epoch) and,
    with label fractions, ``labels.png`` (accuracy against labels per class)."""
    classes = result.classes or None
    plot_folds(
        [
            (
                s.strategy,
                [r.accuracy for r in result.scores if r.strategy == s.strategy],
                s.mean,
                s.std,
            )
            for s in result.summary
        ],
        folder / "compare.png",
        title="accuracy per fold (mean ± std)",
        classes=classes,
    )
    curves = mean_curves(result)
    plot_lines(
        [(name, mean, std) for name, (mean, std) in curves.items()],
        folder / "curves.png",
        title="held-out accuracy per epoch (mean ± std over folds)",
        xlabel="epoch",
        ylabel="held-out accuracy",
        classes=classes,
    )
    fractions = sorted({r.fraction for r in result.scores})
    if len(fractions) > 1:
        xs = [
            float(np.mean([r.labels_per_class for r in result.scores if r.fraction == f]))
            for f in fractions
        ]
        series = [
            (s.strategy, [_mean_accuracy(result, s.strategy, f) for f in fractions], None)
            for s in result.summary
        ]
        plot_lines(
            series,
            folder / "labels.png",
            xs=xs,
            xlabel="training labels per class (mean over folds)",
            ylabel="held-out accuracy",
            title="accuracy against labels per class",
            classes=classes,
        )


def _mean_accuracy(result: CompareResult, strategy: str, fraction: float) -> float:
    """``strategy``'s mean held-out accuracy over the folds trained on ``fraction``."""
    return float(
        np.mean(
            [r.accuracy for r in result.scores if r.strategy == strategy and r.fraction == fraction]
        )
    )


def mean_curves(result: CompareResult) -> dict[str, tuple[list[float], list[float]]]:
    """Per strategy: the held-out accuracy per epoch, mean and std over folds (all labels)."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for s in result.summary:
        curves = [
            r.curve
            for r in result.scores
            if r.strategy == s.strategy and r.fraction == 1.0 and r.curve
        ]
        if curves:
            length = min(len(c) for c in curves)
            arr = np.array([c[:length] for c in curves])
            out[s.strategy] = (arr.mean(axis=0).tolist(), arr.std(axis=0).tolist())
    return out


def write_comparison(result: CompareResult, options: CompareOptions) -> None:
    """``compare.csv``, the plots, ``compare.md``, ``compare.html`` and ``compare.json``
    into ``result.out_dir``, each written atomically."""
    folder = result.out_dir
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        [
            "strategy",
            "repeat",
            "fold",
            "accuracy",
            "macro_f1",
            "seconds",
            "n_train",
            "n_test",
            "chosen",
        ]
    )
    for s in result.scores:
        writer.writerow(
            [
                s.strategy,
                s.repeat,
                s.fold + 1,
                f"{s.accuracy:.6f}",
                f"{s.macro_f1:.6f}",
                f"{s.seconds:.3f}",
                s.n_train,
                s.n_test,
                s.chosen,
            ]
        )
    atomic_write_text(folder / "compare.csv", buf.getvalue())
    _plots(result, folder)
    atomic_write_text(folder / "compare.md", _markdown(result, options))
    write_html_page(folder / "compare.md", folder / "compare.html")
    atomic_write_json(folder / "compare.json", {**result.to_dict(), "config": run_config(options)})
    log.debug("comparison written to %s", folder)  # compare says it, with its time


@dataclass(frozen=True)
class FoldScore:
    """One strategy trained on one fold's training part, scored on its held-out part."""

    strategy: str
    repeat: int
    fold: int
    accuracy: float
    macro_f1: float
    seconds: float
    n_train: int
    n_test: int
    curve: tuple[float, ...] = ()  # held-out accuracy after each epoch
    fraction: float = 1.0  # share of the fold's training labels used
    labels_per_class: float = 0.0  # mean training labels per class
    chosen: str = ""  # for auto: the concrete strategy the recommendation picked
    case: str = ""  # for auto: the case it named, e.g. "small + similar"
    augment: str = ""  # the training augmentation applied (--augment auto: per strategy)


@dataclass(frozen=True)
class StrategySummary:
    """One strategy over all its folds (all labels): mean +- std, and its paired
    difference from the best with a 95% interval (Nadeau & Bengio's corrected t)."""

    strategy: str
    mean: float
    std: float
    f1_mean: float
    seconds: float  # mean training time per fold
    n: int
    diff_vs_best: float  # mean paired difference (this - best), 0 for the best
    ci_low: float
    ci_high: float
    chosen: tuple[str, ...] = ()  # for auto: the strategy picked in each fold, in order
    augment: str = ""  # the training augmentation applied in its folds ("none", "light")


@dataclass
class CompareResult:
    """What ``compare`` returns: every fold's score and the summary, best first."""

    out_dir: Path
    scores: list[FoldScore]
    summary: list[StrategySummary]
    timings: dict[str, float] = field(default_factory=dict)
    data_checks: dict[str, Any] = field(default_factory=dict)  # headstart.data.checks.data_checks
    classes: int = 0  # the data's number of classes (the plots' chance line); 0: unknown

    @property
    def best(self) -> str:
        return self.summary[0].strategy

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "best": self.best,
            "summary": [asdict(s) for s in self.summary],
            "scores": [asdict(s) for s in self.scores],
            "timings": self.timings,
            "data_checks": self.data_checks,
            "classes": self.classes,
        }


def _t_quantile(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def summarise(scores: list[FoldScore]) -> list[StrategySummary]:
    """Mean +- std per strategy, best first, with paired differences against the best."""
    by: dict[str, list[FoldScore]] = {}
    for s in scores:
        if s.fraction == 1.0:
            by.setdefault(s.strategy, []).append(s)
    for rows in by.values():
        rows.sort(key=lambda r: (r.repeat, r.fold))
    means = {k: float(np.mean([r.accuracy for r in v])) for k, v in by.items()}
    order = sorted(by, key=lambda k: -means[k])
    best = np.array([r.accuracy for r in by[order[0]]])
    out = []
    for name in order:
        rows = by[name]
        acc = np.array([r.accuracy for r in rows])
        diff = acc - best
        n = len(diff)
        mean_diff = float(diff.mean())
        if name == order[0] or n < 2:
            low = high = mean_diff
        else:
            ratio = float(np.mean([r.n_test / r.n_train for r in rows]))
            var = float(diff.var(ddof=1)) * (1.0 / n + ratio)
            half = _t_quantile(n - 1) * math.sqrt(var)
            low, high = mean_diff - half, mean_diff + half
        out.append(
            StrategySummary(
                strategy=name,
                mean=float(acc.mean()),
                std=float(acc.std(ddof=1)) if n > 1 else 0.0,
                f1_mean=float(np.mean([r.macro_f1 for r in rows])),
                seconds=float(np.mean([r.seconds for r in rows])),
                n=n,
                diff_vs_best=mean_diff,
                ci_low=low,
                ci_high=high,
                chosen=tuple(r.chosen for r in rows) if any(r.chosen for r in rows) else (),
                augment=" / ".join(dict.fromkeys(r.augment for r in rows if r.augment)),
            )
        )
    return out


def run_config(options: CompareOptions) -> dict[str, Any]:
    """The comparison's options as recorded in ``compare.json`` and the tracked run (the
    storage's password left out)."""
    config = {k: v for k, v in asdict(options).items() if k != "progress"}
    if config.get("storage"):
        config["storage"] = re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", config["storage"])
    return config


# Options that change where or how fast the trials run, not what they compute.
_PLACE = frozenset(
    {"out", "overwrite", "trials_in_parallel", "storage", "study", "device", "workers"}
    | {"cache_dir", "mlflow_uri", "tensorboard", "progress"}
)


def study_config(options: CompareOptions) -> dict[str, Any]:
    """What a comparison's trials compute: the options every machine that joins its study
    must share."""
    return {k: v for k, v in asdict(options).items() if k not in _PLACE}

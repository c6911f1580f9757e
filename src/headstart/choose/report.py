"""What is written for people: a run dir's ``report.md``, the three benefits of transfer
(start, slope, asymptote), and ``headstart report`` over several runs (its ``report.md``
and, through :mod:`headstart.choose.html`, ``report.html``).  The plots are
:mod:`headstart.choose.plots`'.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from headstart._io import atomic_write_text
from headstart.choose.html import write_html_page
from headstart.choose.plots import plot_lines
from headstart.choose.race import report_lines as race_report_lines
from headstart.config.strategies import BatchNorm
from headstart.errors import RunError
from headstart.rundir import read_meta

__all__ = [
    "Benefits",
    "benefits",
    "benefits_table",
    "check_lines",
    "report_runs",
    "write_report_md",
]


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _recommendation_lines(rec: dict[str, Any] | None) -> list[str]:
    """The measurements and reasons behind --strategy auto, for report.md."""
    if not rec:
        return []
    m = rec["measurements"]
    lines = [
        "## Why this plan (--strategy auto)",
        f"- case: **{rec['case']}** -> `{rec['strategy']}`, backbone lr x "
        f"{rec['backbone_lr_mult']:g}",
        f"- probe accuracy on the source's features {m['probe_pretrained']:.3f}, on random "
        f"features {m['probe_random']:.3f} (gain {m['probe_gain']:+.3f})",
    ]
    if m.get("leep") is not None:
        lines.append(
            f"- LEEP of the source's classifier: {m['leep']:.3f} "
            f"({m['leep_normalised']:.0%} of the way from chance to perfect)"
        )
    if m.get("bn_shift") is not None:
        lines.append(f"- BatchNorm statistics shift: {m['bn_shift']:.3f}")
    lines += [f"- {r}" for r in rec["reasons"]]
    lines += [f"- note: {n}" for n in m.get("notes", [])]
    return [*lines, ""]


def check_lines(checks: dict[str, Any] | None) -> list[str]:
    """What the pre-scan found (headstart.data.checks.data_checks), as report lines."""
    if not checks or not checks["checked"]:  # e.g. builtin data: arrays, not files
        return []
    skipped, dup, leak = checks["skipped"], checks["duplicates"], checks["leakage"]
    lines = [f"- images checked: {checks['checked']}; left out (--skip-bad): {skipped['count']}"]
    lines += [f"  - `{e['path']}`: {e['problem']}" for e in skipped["files"][:10]]
    if skipped["count"] > 10:
        lines.append(f"  - ... ({skipped['count']} in all, each listed in headstart.json)")
    if dup["groups"]:
        lines.append(
            f"- duplicates: {dup['groups']} picture(s) more than once under one label "
            f"({dup['extra_copies']} extra copies), e.g. "
            + "; ".join(" = ".join(f"`{p}`" for p in g) for g in dup["examples"][:3])
        )
    if leak is not None:
        lines.append(
            f"- leakage: {leak['count']} of {leak['of']} validation images also in training"
            + (
                " (**validation scores are too high**), e.g. "
                + "; ".join(f"`{a}` = `{b}`" for a, b in leak["examples"][:3])
                if leak["count"]
                else ""
            )
        )
    return lines


def _augmentation_lines(aug: dict[str, Any] | None) -> list[str]:
    if not aug:
        return []
    return [f"- training augmentation: {aug['applied']} ({aug['why']})"]


def _input_line(meta: dict[str, Any]) -> str:
    text = meta.get("text")
    if text:  # a text model: tokens, not pixels
        return f"- input: texts, at most {text['max_length']} tokens, {text['pooling']} pooling"
    pre = meta["preprocessing"]
    return f"- input: {tuple(pre['input_size'])}, mean {pre['mean']}, std {pre['std']}"


def write_report_md(meta: dict[str, Any], rows: Sequence[dict[str, Any]], dest: Path) -> None:
    """A short human report: what was trained on what, the plan, and the results."""
    src, plan, metrics = meta["source"], meta["plan"], meta["metrics"]
    data = meta["data"]
    lines = [
        f"# headstart {meta['kind']}: {src['spec']} on {data['train']['spec']}",
        "",
        "## Source",
        f"- architecture: `{src['arch']}` ({src['parameters']:,} backbone parameters, "
        f"{src['feature_dim']}-d features)",
        f"- weights: {src['weights']['description']}",
        f"- stages: {', '.join(src['stages'])}",
        _input_line(meta),
        "",
        "## Plan",
        f"- strategy: `{plan['strategy']}`"
        + (" (random initialisation)" if plan["reinitialise"] else ""),
        f"- frozen: {', '.join(plan['frozen_stages']) or 'nothing'}",
        f"- trains: {', '.join(plan['trainable_stages']) or 'head only'}"
        + (f" at lr {plan['backbone_lr']:g}" if plan["trainable_stages"] else ""),
        *(
            [
                f"- lora: rank {plan['lora']['r']}, alpha {plan['lora']['alpha']} on "
                f"{', '.join(plan['lora']['target_modules'])} at lr {plan['backbone_lr']:g} "
                "(merged into the weights after training)"
            ]
            if plan.get("lora")
            else []
        ),
        f"- head: new Linear({src['feature_dim']}, {len(meta['classes'])}) at lr "
        f"{plan['head_lr']:g}",
        f"- BatchNorm: {BatchNorm.parse(plan['bn_mode']).describe()}",
        *_augmentation_lines(meta.get("augmentation")),
        *_schedule_lines(meta),
        "",
        *_recommendation_lines(meta.get("recommendation")),
        *race_report_lines((meta.get("recommendation") or {}).get("race")),
        "## Data",
        f"- classes ({len(meta['classes'])}): {', '.join(meta['classes'])}",
        f"- train: {data['train']['n_items']} items; validation: "
        f"{data['val']['n_items'] if data.get('val') else 0} items",
        f"- fingerprint: `{data['train']['fingerprint'][:16]}`",
        *check_lines(data.get("checks")),
        "",
        "## Result",
        f"- selected epoch: {metrics['best_epoch']} of {len(rows)} "
        f"({(meta.get('budget') or {}).get('select', meta['config']['select'])})",
        f"- validation accuracy: {_fmt(metrics.get('val_acc'))}, macro-F1: "
        f"{_fmt(metrics.get('val_f1'))}",
        f"- time: {meta['timings']['train_s']:.1f} s training, "
        f"{meta['timings']['total_s']:.1f} s in all",
        "",
        "![loss and accuracy per epoch](curves.png)",
        "",
        "| epoch | train loss | train acc | val loss | val acc | val F1 | s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['epoch']} | {_fmt(r['train_loss'])} | {_fmt(r['train_acc'])} | "
            f"{_fmt(r['val_loss'])} | {_fmt(r['val_acc'])} | {_fmt(r['val_f1'])} | "
            f"{r['seconds']:.1f} |"
        )
    atomic_write_text(dest, "\n".join(lines) + "\n")


def _schedule_lines(meta: dict[str, Any]) -> list[str]:
    """What was sized from the data: the budget, the rate the range test found, or the
    head solved on frozen features."""
    lines = []
    budget, found, solver = meta.get("budget"), meta.get("lr_find"), meta.get("head_solver")
    if budget:
        lines.append(
            f"- budget: batch {budget['batch_size']}, {budget['epochs']} epochs "
            f"({budget['steps']} optimizer steps), the {budget['select']} epoch kept: "
            + "; ".join(budget["why"])
        )
    if found and not found.get("plot"):
        lines.append(f"- learning rate: {found['lr']:.3g} ({found['rule']})")
    elif found:
        lines += [
            f"- learning rate: {found['lr']:.3g}, by a range test ({found['rule']}, "
            f"{found['steps']} steps)",
            "",
            f"![learning-rate range test]({found['plot']})",
            "",
        ]
    if solver:
        role = solver.get("role", "the trained head")
        lines.append(f"- head solved on the frozen features ({role}): {solver['describe']}")
    return lines


@dataclass(frozen=True)
class Benefits:
    """The three benefits of transfer (the articles' higher start, slope and asymptote),
    read off a curve of validation accuracy per epoch."""

    start: float  # accuracy after the first epoch
    epochs_to_90: int | None  # first epoch reaching 90% of the best accuracy
    early_auc: float  # mean accuracy over the first `early` epochs (area under the curve)
    asymptote: float  # best accuracy

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def benefits(curve: Sequence[float], *, early: int = 3) -> Benefits:
    """Start, slope and asymptote of one accuracy curve (epoch 1 first)."""
    if not curve:
        raise ValueError("an empty curve has no benefits to measure")
    values = [float(v) for v in curve]
    best = max(values)
    reach = next((i + 1 for i, v in enumerate(values) if v >= 0.9 * best), None)
    head = values[: max(1, early)]
    return Benefits(
        start=values[0],
        epochs_to_90=reach,
        early_auc=sum(head) / len(head),
        asymptote=best,
    )


def benefits_table(named: Sequence[tuple[str, Benefits]], *, baseline: str | None) -> list[str]:
    """Markdown rows for the three benefits, with gains over ``baseline`` (e.g. scratch)."""
    base = dict(named).get(baseline) if baseline else None
    lines = [
        "| run | start (epoch 1) | epochs to 90% of best | early mean (AUC) | best |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, b in named:
        cells = [
            f"{b.start:.3f}",
            str(b.epochs_to_90 or "-"),
            f"{b.early_auc:.3f}",
            f"{b.asymptote:.3f}",
        ]
        if base is not None and name != baseline:
            cells[0] += f" ({b.start - base.start:+.3f})"
            if b.epochs_to_90 and base.epochs_to_90:
                cells[1] += f" ({b.epochs_to_90 - base.epochs_to_90:+d})"
            cells[2] += f" ({b.early_auc - base.early_auc:+.3f})"
            cells[3] += f" ({b.asymptote - base.asymptote:+.3f})"
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return lines


def report_runs(runs: Sequence[str | Path], out: str | Path) -> dict[str, Any]:
    """``headstart report RUN...``: the runs' validation curves on one plot and the three
    benefits of each, with gains over the scratch run when one is among them.

    Writes ``curves.png``, ``report.md`` and a standalone ``report.html`` into ``out``.
    Raises :class:`RunError` when no runs are given or a run has no validation curve.
    """
    if not runs:
        raise RunError("no runs given; pass run dirs written by fit or pretrain")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    labelled = _labelled([_read_curve(Path(run)) for run in runs])
    baseline = next((label for label, _, info in labelled if info["reinitialise"]), None)
    named = [(label, benefits(curve)) for label, curve, _ in labelled]
    classes = {info["classes"] for _, _, info in labelled}
    plot_lines(
        [(label, curve, None) for label, curve, _ in labelled],
        folder / "curves.png",
        title="validation accuracy per epoch",
        xlabel="epoch",
        # one chance line where the runs share their number of classes
        classes=classes.pop() if len(classes) == 1 else None,
    )
    markdown_text = _runs_markdown(labelled, named, baseline)
    atomic_write_text(folder / "report.md", markdown_text)
    write_html_page(folder / "report.md", folder / "report.html")
    return {
        "out_dir": str(folder),
        "baseline": baseline,
        "runs": [
            {"label": label, **info, **b.to_dict()}
            for (label, _, info), (_, b) in zip(labelled, named, strict=True)
        ],
    }


# A run as report_runs reads it: its strategy (later its label), its validation accuracy
# per epoch, and what the report says of it (run dir, source, whether from scratch).
_Curve = tuple[str, list[float], dict[str, Any]]


def _read_curve(path: Path) -> _Curve:
    """A run dir's strategy, validation curve (``metrics.csv``) and facts for the report."""
    meta = read_meta(path)
    with open(path / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    curve = [float(r["val_acc"]) for r in rows if r.get("val_acc")]
    if not curve:
        raise RunError(
            f"{path}: has no validation curve: it trained every label (no validation "
            "split: --val-fraction 0, or auto below 200 items to hold out); fit with "
            "--val-fraction 0.2 to report on its curve, or cross-validate with headstart "
            "compare"
        )
    info = {
        "run": str(path),
        "source": meta["source"]["spec"],
        "reinitialise": meta["plan"]["reinitialise"],
        "classes": len(meta["classes"]),
    }
    return meta["plan"]["strategy"], curve, info


def _labelled(entries: list[_Curve]) -> list[_Curve]:
    """The runs named by strategy, with the run dir's name added where two share one."""
    counts: dict[str, int] = {}
    for name, _, _ in entries:
        counts[name] = counts.get(name, 0) + 1
    return [
        (f"{name} ({Path(info['run']).name})" if counts[name] > 1 else name, curve, info)
        for name, curve, info in entries
    ]


def _runs_markdown(
    labelled: list[_Curve], named: list[tuple[str, Benefits]], baseline: str | None
) -> str:
    """``report.md``: the runs, the three benefits of each, the plot."""
    lines = [
        "# headstart report: what the pretraining bought",
        "",
        "## The runs",
        "",
        *(f"- `{label}`: `{info['run']}`, from `{info['source']}`" for label, _, info in labelled),
        "",
        "## The three benefits of transfer",
        "",
        "*start*: validation accuracy after the first epoch; *slope*: epochs to reach 90% of "
        "the best, and the mean over the first 3 epochs; *asymptote*: the best accuracy"
        + (
            f" (in brackets: the gain over `{baseline}`)."
            if baseline
            else ". No scratch run was given, so there is nothing to measure gains against."
        ),
        "",
        *benefits_table(named, baseline=baseline),
        "",
        "![validation accuracy per epoch](curves.png)",
        "",
    ]
    return "\n".join(lines)

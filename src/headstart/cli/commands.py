"""One function per command: the parsed flags into the API's options, the API called, the
result printed for people and returned for ``--json``.

Each imports its command's module when it runs, so that ``headstart --help`` does not load
torch.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from headstart.cli.flags import options_from
from headstart.cli.output import print_data, print_human
from headstart.config.options import (
    AdaptOptions,
    CompareOptions,
    EmbedOptions,
    FitOptions,
    LrFindOptions,
    PretrainOptions,
    RankOptions,
    RecommendOptions,
)

__all__ = [
    "cmd_adapt",
    "cmd_compare",
    "cmd_embed",
    "cmd_evaluate",
    "cmd_export",
    "cmd_fit",
    "cmd_lr_find",
    "cmd_predict",
    "cmd_pretrain",
    "cmd_rank",
    "cmd_recommend",
    "cmd_report",
]


def cmd_fit(args: argparse.Namespace) -> dict[str, Any]:
    from headstart.api.fit import fit

    result = fit(options_from(FitOptions, args))
    print_human(args, _fit_lines(result.summary()))
    return result.summary()


def cmd_pretrain(args: argparse.Namespace) -> dict[str, Any]:
    from headstart.api.fit import pretrain

    result = pretrain(options_from(PretrainOptions, args))
    summary = result.summary()
    print_human(args, [*_fit_lines(summary), f"use it: --source file:{summary['run_dir']}"])
    return summary


def _fit_lines(s: dict[str, Any]) -> list[str]:
    m = s["metrics"]
    scored = (
        "no validation split (every label trained; --val-fraction 0.2 holds some out, "
        "headstart compare cross-validates)"
        if m["val_acc"] is None
        else f"validation accuracy {m['val_acc']:.4f}, macro-F1 {m['val_f1']:.4f}"
    )
    return [
        f"{s['strategy']} on {s['source']}: {scored} "
        f"(epoch {m['best_epoch']} of {m['epochs_run']}, {s['timings']['total_s']:.1f}s)",
        f"run dir: {s['run_dir']}",
    ]


def cmd_compare(args: argparse.Namespace) -> dict[str, Any]:
    from headstart.choose.compare import compare
    from headstart.choose.comparison import format_table

    result = compare(options_from(CompareOptions, args))
    print_human(
        args,
        [
            format_table(result.summary),
            f"written to {result.out_dir} (compare.md, compare.html, compare.csv, plots) in "
            f"{result.timings['total_s']:.0f}s",
        ],
    )
    return result.to_dict()


def cmd_recommend(args: argparse.Namespace) -> dict[str, Any]:
    from headstart.choose.recommend import recommend

    rec = recommend(options_from(RecommendOptions, args))
    # nothing printed: recommend logs rec.describe() itself, as `fit --strategy auto` shows it
    return rec.to_dict()


def cmd_rank(args: argparse.Namespace) -> dict[str, Any]:
    from headstart.choose.candidates import format_rank
    from headstart.choose.rank import rank_sources

    result = rank_sources(options_from(RankOptions, args))
    print_human(args, [format_rank(result)])
    return result.to_dict()


def cmd_adapt(args: argparse.Namespace) -> dict[str, Any]:
    from headstart.api.adapt import adapt

    result = adapt(options_from(AdaptOptions, args))
    m = result.metrics
    lines = [f"{result.method}: source-domain training accuracy {m['train_acc']:.4f}"]
    if m["val_acc"] is not None:
        lines.append(f"source-domain validation accuracy {m['val_acc']:.4f}")
    if m["target_acc"] is not None:
        lines.append(f"target-domain accuracy {m['target_acc']:.4f} (--eval)")
    lines.append(f"run dir: {result.run_dir} ({result.timings['total_s']:.1f}s)")
    print_human(args, lines)
    return result.summary()


def cmd_lr_find(args: argparse.Namespace) -> dict[str, Any]:
    from headstart.api.lr_find import lr_find

    result = lr_find(options_from(LrFindOptions, args))
    print_human(args, [result.describe()])
    return result.summary()


def cmd_embed(args: argparse.Namespace) -> dict[str, Any]:
    from headstart.api.embed import embed

    result = embed(options_from(EmbedOptions, args))
    print_human(
        args,
        [
            f"{result.n_items} x {result.dim} features -> {', '.join(map(str, result.files))} "
            f"({result.seconds:.1f}s{', from the feature cache' if result.cache_hit else ''})"
        ],
    )
    return result.summary()


def cmd_report(args: argparse.Namespace) -> dict[str, Any]:
    from headstart.choose.report import report_runs

    out = args.out or f"runs/report-{time.strftime('%Y%m%d-%H%M%S')}"
    result = report_runs(args.runs, out)
    lines = [
        f"{r['label']:<24} start {r['start']:.3f}  epochs to 90% {r['epochs_to_90'] or '-'}  "
        f"early {r['early_auc']:.3f}  best {r['asymptote']:.3f}"
        for r in result["runs"]
    ]
    print_human(args, [*lines, f"report: {result['out_dir']}/report.html"])
    return result


def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from headstart.api.predict import evaluate

    result = evaluate(
        args.run,
        args.data,
        out=args.out,
        batch_size=args.batch_size,
        device=args.device,
        text_col=args.text_col,
        label_col=args.label_col,
        overwrite=args.overwrite,
    )
    width = max(len(r["class"]) for r in result.per_class)
    lines = [f"{'class':<{width}}  precision  recall     f1  support"]
    for r in result.per_class:
        lines.append(
            f"{r['class']:<{width}}  {r['precision']:9.3f}  {r['recall']:6.3f}  "
            f"{r['f1']:5.3f}  {r['support']:7d}"
        )
    lines += [
        f"accuracy {result.accuracy:.4f}, macro-F1 {result.macro_f1:.4f} on {result.n_items} items",
        f"confusion matrix: {result.out_dir}/confusion_matrix.png",
    ]
    print_human(args, lines)
    return result.summary()


def cmd_predict(args: argparse.Namespace) -> dict[str, Any]:
    from headstart.api.predict import predict

    rows = predict(
        args.run,
        args.inputs,
        top_k=args.top_k,
        batch_size=args.batch_size,
        device=args.device,
        texts=args.text,
        text_col=args.text_col,
        skip_bad=args.skip_bad,
    )
    lines = []
    for r in rows:
        if r.get("error"):
            lines.append(f"{r['path']}\t(not labelled: {r['error']})")
            continue
        extra = ""
        if args.top_k > 1:
            extra = (
                "  ("
                + ", ".join(f"{t['label']} {t['probability']:.3f}" for t in r["top"][1:])
                + ")"
            )
        lines.append(f"{r['path']}\t{r['label']}\t{r['probability']:.4f}{extra}")
    print_data(args, lines)
    return {"run_dir": args.run, "predictions": rows}


def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    from headstart.export import export

    result = export(
        args.run, format=args.format, out=args.out, opset=args.opset, overwrite=args.overwrite
    )
    print_human(
        args,
        [
            f"{result.format}: {result.path} (max |logit difference| from PyTorch "
            f"{result.max_abs_diff:.2g})",
            f"loads with: {result.loader}"
            if result.loader
            else f"preprocessing: {result.preprocessing}",
        ],
    )
    return result.summary()

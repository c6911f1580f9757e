"""The command line: a thin layer that parses flags into the API's option dataclasses.

Every error headstart raises on purpose becomes one line on stderr and a non-zero exit;
``--debug`` shows the traceback.  With ``--json`` stdout carries exactly one JSON object
and all human output goes to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from headstart.cli.cache import _add_cache_parser
from headstart.cli.output import _human

log = logging.getLogger("headstart")


EXIT_ERROR = 1  # a HeadstartError: bad input, the message says what to do


EXIT_USAGE = 2  # argparse's own code for bad flags


EXIT_BUG = 3  # anything else escaped: a bug in headstart


_TYPES: dict[str, Callable[[str], Any]] = {"str": str, "int": int, "float": float}


def _add_dataclass_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field: ``backbone_lr_mult`` -> ``--backbone-lr-mult``; ``data`` positional."""
    not_flags: frozenset[str] = getattr(cls, "NOT_FLAGS", frozenset())
    fields = [
        f
        for f in dataclasses.fields(cls)
        if f.metadata.get("cli", True) and f.name not in not_flags
    ]
    for f in fields:
        meta = f.metadata
        help_text = meta.get("help", "")
        type_name = str(f.type).replace(" | None", "").strip()
        if f.name == "data":
            # --resume takes DATA from the checkpoint: optional where a command resumes.
            resumes = any(g.name == "resume" for g in fields)
            nargs = "?" if resumes else None
            parser.add_argument("data", metavar="DATA", nargs=nargs, default="", help=help_text)
            continue
        flag = "--" + f.name.replace("_", "-")
        if type_name == "bool":
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text
            )
        else:
            shown = "" if f.default is None else f" (default: {f.default})"
            metavar = meta.get("metavar") or {"int": "N", "float": "X"}.get(
                type_name, f.name.upper()
            )
            # a field with a "const" takes its value optionally: --flag alone means const
            optional = {"nargs": "?", "const": meta["const"]} if "const" in meta else {}
            if optional:
                shown = f" (alone: {meta['const']})"
            parser.add_argument(
                flag,
                type=_TYPES[type_name],
                default=f.default,
                metavar=metavar,
                help=help_text + shown,
                **optional,
            )


def _options(cls: type, args: argparse.Namespace) -> Any:
    """The options dataclass from parsed flags; progress bars only on a terminal."""
    names = {f.name for f in dataclasses.fields(cls)}
    options = cls(**{k: v for k, v in vars(args).items() if k in names})
    if "progress" in names:
        options.progress = not args.quiet and sys.stderr.isatty()
    return options


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object on stdout (human output on stderr)",
    )
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    common.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    return common


def build_parser() -> argparse.ArgumentParser:
    from headstart._version import __version__
    from headstart.config.options import (
        AdaptOptions,
        CompareOptions,
        EmbedOptions,
        FitOptions,
        PretrainOptions,
        RankOptions,
        RecommendOptions,
    )

    common = _common()
    parser = argparse.ArgumentParser(
        prog="headstart",
        description="Fine-tune a pretrained model on a small labelled data set, and show "
        "what the pretraining bought.",
    )
    parser.add_argument("--version", action="version", version=f"headstart {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # Commands whose flags are the fields of an options dataclass (headstart.config.options).
    option_commands = (
        (
            "fit",
            FitOptions,
            _cmd_fit,
            "fine-tune a source on DATA",
            "Build the target model (source minus its output layer, plus a new head), apply "
            "the strategy's plan, train, write a run dir.",
        ),
        (
            "pretrain",
            PretrainOptions,
            _cmd_pretrain,
            "train a source from scratch",
            "Train an architecture from scratch on a source data set; use the result with "
            "--source file:OUT.",
        ),
        (
            "compare",
            CompareOptions,
            _cmd_compare,
            "cross-validate strategies on the same folds",
            "Train every strategy on the same stratified k folds; report mean +- std, paired "
            "differences against the best with 95% intervals, time per strategy; write "
            "compare.csv, compare.md, compare.html, compare.json and plots.",
        ),
        (
            "recommend",
            RecommendOptions,
            _cmd_recommend,
            "measure size and similarity, name the case, propose a plan",
            "Measure the target data against the source (size; probe accuracy against random "
            "features, LEEP, BatchNorm statistics shift), name which of the four cases "
            "(small/large x similar/dissimilar) it is, and propose the plan; 'fit --strategy "
            "auto' does the same, then trains.",
        ),
        (
            "rank",
            RankOptions,
            _cmd_rank,
            "score candidate sources on DATA without fine-tuning",
            "Score every candidate source (SPEC or SPEC@WEIGHTS) on the target data from one "
            "forward pass each: LogME, LEEP (needs the source's own classifier head), k-NN and "
            "linear-probe accuracy under cross-validation; print them ranked, with the "
            "seconds each took. --validate also fine-tunes each candidate and reports "
            "Kendall's tau between each score and the real accuracy.",
        ),
        (
            "adapt",
            AdaptOptions,
            _cmd_adapt,
            "train for an unlabelled target domain (DANN, CORAL, source-only)",
            "Train on labelled source-domain DATA for the unlabelled --target images: DANN "
            "(gradient reversal, domain classifier, the paper's lambda schedule), Deep CORAL, "
            "or source-only; --eval reports the target accuracy. Writes a run dir as fit does.",
        ),
        (
            "embed",
            EmbedOptions,
            _cmd_embed,
            "write a source's features and the labels to a file",
            "Run the source's backbone over DATA (evaluation preprocessing) and write the "
            "features with the labels: .npz, .npy (+ STEM.labels.npy, STEM.json) or .parquet, "
            "for scikit-learn or any other tool.",
        ),
    )
    for name, cls, handler, help_text, description in option_commands:
        p = sub.add_parser(name, parents=[common], help=help_text, description=description)
        _add_dataclass_flags(p, cls)
        p.set_defaults(handler=handler)

    p = sub.add_parser(
        "report",
        parents=[common],
        help="transfer vs scratch: start, slope, asymptote",
        description="Put the validation curves of several runs on one plot and measure "
        "the three benefits of transfer (start, slope, asymptote) against the scratch run.",
    )
    p.add_argument("runs", metavar="RUN", nargs="+", help="run dirs written by fit")
    p.add_argument(
        "--out",
        default=None,
        help="folder for report.md, report.html, curves.png (default runs/report-TIMESTAMP)",
    )
    p.set_defaults(handler=_cmd_report)

    p = sub.add_parser("evaluate", parents=[common], help="score a run on labelled data")
    p.add_argument("run", metavar="RUN", help="a run dir written by fit or pretrain")
    p.add_argument("data", metavar="DATA", help="labelled data (folder, CSV or builtin:...)")
    p.add_argument(
        "--out",
        default=None,
        help="folder for eval.json, per_class.csv and confusion_matrix.png (default RUN/eval)",
    )
    p.add_argument("--batch-size", type=int, default=64, metavar="N")
    p.add_argument("--device", default="auto")
    p.add_argument("--text-col", default=None, help="texts: the text column (default: the run's)")
    p.add_argument("--label-col", default=None, help="texts: the label column (default: the run's)")
    p.set_defaults(handler=_cmd_evaluate)

    p = sub.add_parser("predict", parents=[common], help="label images or texts with a run")
    p.add_argument("run", metavar="RUN", help="a run dir written by fit or pretrain")
    p.add_argument(
        "inputs",
        metavar="INPUT",
        nargs="*",
        help="image files or folders; for a text model, files of texts (.txt: one per line; "
        ".csv/.tsv/.jsonl: the text column)",
    )
    p.add_argument(
        "--text", action="append", default=[], metavar="TEXT", help="a text to label (repeatable)"
    )
    p.add_argument("--text-col", default=None, help="texts: the text column (default: the run's)")
    p.add_argument("--top-k", type=int, default=1, metavar="K", help="also list the K best")
    p.add_argument("--batch-size", type=int, default=64, metavar="N")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="label the readable images and list the unreadable ones (with why) instead of "
        "stopping",
    )
    p.set_defaults(handler=_cmd_predict)

    p = sub.add_parser(
        "export",
        parents=[common],
        help="export a run's model to ONNX or TorchScript",
        description="Write the run's model as ONNX (onnxruntime) or TorchScript, checked "
        "against PyTorch on a random batch, with STEM.preprocessing.json beside it: the "
        "classes and how to turn an image into the input tensor.",
    )
    p.add_argument("run", metavar="RUN", help="a run dir written by fit or pretrain")
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript"])
    p.add_argument(
        "--out", default=None, help="file to write (default RUN/export/model.onnx or model.pt)"
    )
    p.add_argument("--opset", type=int, default=18, metavar="N", help="ONNX opset (default: 18)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(handler=_cmd_export)

    _add_cache_parser(sub, common)
    return parser


def _cmd_fit(args: argparse.Namespace) -> dict[str, Any]:
    from headstart.api.fit import fit
    from headstart.config.options import FitOptions

    result = fit(_options(FitOptions, args))
    _human(args, _fit_lines(result.summary()))
    return result.summary()


def _cmd_pretrain(args: argparse.Namespace) -> dict[str, Any]:
    from headstart.api.fit import pretrain
    from headstart.config.options import PretrainOptions

    result = pretrain(_options(PretrainOptions, args))
    summary = result.summary()
    _human(args, [*_fit_lines(summary), f"use it: --source file:{summary['run_dir']}"])
    return summary


def _fit_lines(s: dict[str, Any]) -> list[str]:
    m = s["metrics"]
    acc = "-" if m["val_acc"] is None else f"{m['val_acc']:.4f}"
    f1 = "-" if m["val_f1"] is None else f"{m['val_f1']:.4f}"
    return [
        f"{s['strategy']} on {s['source']}: validation accuracy {acc}, macro-F1 {f1} "
        f"(epoch {m['best_epoch']} of {m['epochs_run']}, {s['timings']['total_s']:.1f}s)",
        f"run dir: {s['run_dir']}",
    ]


def _cmd_compare(args: argparse.Namespace) -> dict[str, Any]:
    from headstart.choose.compare import compare
    from headstart.choose.comparison import format_table
    from headstart.config.options import CompareOptions

    result = compare(_options(CompareOptions, args))
    _human(
        args,
        [
            format_table(result.summary),
            f"written to {result.out_dir} (compare.md, compare.html, compare.csv, plots) in "
            f"{result.timings['total_s']:.0f}s",
        ],
    )
    return result.to_dict()


def _cmd_recommend(args: argparse.Namespace) -> dict[str, Any]:
    from headstart.choose.recommend import recommend
    from headstart.config.options import RecommendOptions

    rec = recommend(_options(RecommendOptions, args))
    _human(args, [rec.describe()])
    return rec.to_dict()


def _cmd_rank(args: argparse.Namespace) -> dict[str, Any]:
    from headstart.choose.candidates import format_rank
    from headstart.choose.rank import rank_sources
    from headstart.config.options import RankOptions

    result = rank_sources(_options(RankOptions, args))
    _human(args, [format_rank(result)])
    return result.to_dict()


def _cmd_adapt(args: argparse.Namespace) -> dict[str, Any]:
    from headstart.api.adapt import adapt
    from headstart.config.options import AdaptOptions

    result = adapt(_options(AdaptOptions, args))
    m = result.metrics
    lines = [f"{result.method}: source-domain training accuracy {m['train_acc']:.4f}"]
    if m["val_acc"] is not None:
        lines.append(f"source-domain validation accuracy {m['val_acc']:.4f}")
    if m["target_acc"] is not None:
        lines.append(f"target-domain accuracy {m['target_acc']:.4f} (--eval)")
    lines.append(f"run dir: {result.run_dir} ({result.timings['total_s']:.1f}s)")
    _human(args, lines)
    return result.summary()


def _cmd_embed(args: argparse.Namespace) -> dict[str, Any]:
    from headstart.api.embed import embed
    from headstart.config.options import EmbedOptions

    result = embed(_options(EmbedOptions, args))
    _human(
        args,
        [
            f"{result.n_items} x {result.dim} features -> {', '.join(map(str, result.files))} "
            f"({result.seconds:.1f}s{', from the feature cache' if result.cache_hit else ''})"
        ],
    )
    return result.summary()


def _cmd_report(args: argparse.Namespace) -> dict[str, Any]:
    import time

    from headstart.choose.report import report_runs

    out = args.out or f"runs/report-{time.strftime('%Y%m%d-%H%M%S')}"
    result = report_runs(args.runs, out)
    lines = [
        f"{r['label']:<24} start {r['start']:.3f}  epochs to 90% {r['epochs_to_90'] or '-'}  "
        f"early {r['early_auc']:.3f}  best {r['asymptote']:.3f}"
        for r in result["runs"]
    ]
    _human(args, [*lines, f"report: {result['out_dir']}/report.html"])
    return result


def _cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from headstart.api.predict import evaluate

    result = evaluate(
        args.run,
        args.data,
        out=args.out,
        batch_size=args.batch_size,
        device=args.device,
        text_col=args.text_col,
        label_col=args.label_col,
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
    _human(args, lines)
    return result.summary()


def _cmd_predict(args: argparse.Namespace) -> dict[str, Any]:
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
    _human(args, lines, stream=sys.stderr if args.json else sys.stdout)
    return {"run_dir": args.run, "predictions": rows}


def _cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    from headstart.export import export

    result = export(
        args.run, format=args.format, out=args.out, opset=args.opset, overwrite=args.overwrite
    )
    _human(
        args,
        [
            f"{result.format}: {result.path} (max |logit difference| from PyTorch "
            f"{result.max_abs_diff:.2g})",
            f"preprocessing: {result.preprocessing}",
        ],
    )
    return result.summary()


def _setup_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("headstart")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``headstart`` command; returns the exit code."""
    from headstart.errors import HeadstartError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed its message
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    _setup_logging(args.quiet)
    try:
        result = args.handler(args)
    except HeadstartError as exc:
        if args.debug:
            raise
        print(f"headstart: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("headstart: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(
            f"headstart: internal error: {type(exc).__name__}: {first} (this is a bug; "
            "rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_BUG
    if args.json:
        sys.stdout.write(json.dumps(result, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

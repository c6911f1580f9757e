"""The command line: a thin layer that parses flags into the API's option dataclasses.

Every error headstart raises on purpose becomes one line on stderr and a non-zero exit;
``--debug`` shows the traceback.  With ``--json`` stdout carries exactly one JSON object
and all human output goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from headstart._version import __version__
from headstart.cli import commands
from headstart.cli.cache import add_cache_parser
from headstart.cli.flags import add_dataclass_flags, common_flags
from headstart.cli.output import setup_logging
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

__all__ = ["EXIT_BUG", "EXIT_ERROR", "EXIT_USAGE", "build_parser", "main"]

log = logging.getLogger("headstart")


# The one rule: 2 when argparse refuses the command line (an unknown command or flag, a
# missing argument, a value of the wrong type or not in the flag's list); 1 for all that
# headstart refuses once it parsed, flag values out of range included (a HeadstartError,
# or a write the user can fix: full disk, read-only folder); 3 only for a bug.
EXIT_ERROR = 1  # a HeadstartError: bad input, the message says what to do


EXIT_USAGE = 2  # argparse's own code: the command line does not parse


EXIT_BUG = 3  # anything else escaped: a bug in headstart


@dataclass(frozen=True)
class _OptionCommand:
    """A command whose flags are the fields of an options dataclass."""

    name: str
    options: type
    handler: Callable[[argparse.Namespace], dict[str, Any]]
    help: str
    description: str


# In the order ``headstart --help`` lists them; the options are headstart.config.options'.
_OPTION_COMMANDS = (
    _OptionCommand(
        "fit",
        FitOptions,
        commands.cmd_fit,
        "fine-tune a source on DATA",
        "Build the target model (source minus its output layer, plus a new head), apply "
        "the strategy's plan, train, write a run dir.",
    ),
    _OptionCommand(
        "pretrain",
        PretrainOptions,
        commands.cmd_pretrain,
        "train a source from scratch",
        "Train an architecture from scratch on a source data set; use the result with "
        "--source file:OUT.",
    ),
    _OptionCommand(
        "compare",
        CompareOptions,
        commands.cmd_compare,
        "cross-validate strategies on the same folds",
        "Train every strategy on the same stratified k folds; report mean +- std, paired "
        "differences against the best with 95% intervals, time per strategy; write "
        "compare.csv, compare.md, compare.html, compare.json and plots.",
    ),
    _OptionCommand(
        "recommend",
        RecommendOptions,
        commands.cmd_recommend,
        "measure size and similarity, name the case, propose a plan",
        "Measure the target data against the source (size; probe accuracy against random "
        "features, LEEP, BatchNorm statistics shift), name which of the four cases "
        "(small/large x similar/dissimilar) it is, and propose the plan; 'fit --strategy "
        "auto' does the same, then trains.",
    ),
    _OptionCommand(
        "rank",
        RankOptions,
        commands.cmd_rank,
        "score candidate sources on DATA without fine-tuning",
        "Score every candidate source (SPEC or SPEC@WEIGHTS) on the target data from one "
        "forward pass each: LogME, LEEP (needs the source's own classifier head), k-NN and "
        "linear-probe accuracy under cross-validation; print them ranked, with the "
        "seconds each took. --validate also fine-tunes each candidate and reports "
        "Kendall's tau between each score and the real accuracy.",
    ),
    _OptionCommand(
        "adapt",
        AdaptOptions,
        commands.cmd_adapt,
        "train for an unlabelled target domain (DANN, CORAL, source-only)",
        "Train on labelled source-domain DATA for the unlabelled --target images: DANN "
        "(gradient reversal, domain classifier, the paper's lambda schedule), Deep CORAL, "
        "or source-only; --eval reports the target accuracy. Writes a run dir as fit does.",
    ),
    _OptionCommand(
        "lr-find",
        LrFindOptions,
        commands.cmd_lr_find,
        "the learning-rate range test alone: plot the curve, print the rate",
        "Build what fit would train (source, plan, budget, loaders) on DATA's training "
        "part and sweep the learning rate up over a tenth of its steps (Smith 2017, as "
        "fastai's lr_find); print the rate fit --lr auto takes and write lr_find.png and "
        "lr_find.json. Nothing is trained.",
    ),
    _OptionCommand(
        "embed",
        EmbedOptions,
        commands.cmd_embed,
        "write a source's features and the labels to a file",
        "Run the source's backbone over DATA (evaluation preprocessing) and write the "
        "features with the labels: .npz, .npy (+ STEM.labels.npy, STEM.json) or .parquet, "
        "for scikit-learn or any other tool.",
    ),
)


def build_parser() -> argparse.ArgumentParser:
    """The ``headstart`` parser: every command, each with the common flags and its
    handler (``args.handler``)."""
    common = common_flags()
    parser = argparse.ArgumentParser(
        prog="headstart",
        description="Fine-tune a pretrained model on a small labelled data set, and show "
        "what the pretraining bought.",
    )
    parser.add_argument("--version", action="version", version=f"headstart {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in _OPTION_COMMANDS:
        p = sub.add_parser(
            command.name, parents=[common], help=command.help, description=command.description
        )
        add_dataclass_flags(p, command.options)
        p.set_defaults(handler=command.handler)
    _add_report_parser(sub, common)
    _add_evaluate_parser(sub, common)
    _add_predict_parser(sub, common)
    _add_export_parser(sub, common)
    add_cache_parser(sub, common)
    return parser


def _add_report_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """``headstart report RUN... [--out DIR]``."""
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
    p.set_defaults(handler=commands.cmd_report)


def _add_evaluate_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """``headstart evaluate RUN DATA``."""
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
    p.add_argument(
        "--overwrite", action="store_true", help="replace an earlier evaluation in --out"
    )
    p.set_defaults(handler=commands.cmd_evaluate)


def _add_predict_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """``headstart predict RUN [INPUT...] [--text TEXT]``."""
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
    p.set_defaults(handler=commands.cmd_predict)


def _add_export_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """``headstart export RUN [--format onnx|torchscript|timm|hf]``."""
    p = sub.add_parser(
        "export",
        parents=[common],
        help="export a run's model to ONNX, TorchScript, a timm or a Hugging Face folder",
        description="Write the run's model as ONNX (onnxruntime) or TorchScript, with "
        "STEM.preprocessing.json beside it: the classes and how to turn an image into the "
        "input tensor; or as a folder with a model card that timm (timm: runs; "
        'timm.create_model("local-dir:OUT", pretrained=True)) or transformers (hf: runs; '
        "the Auto classes, or sentence-transformers for mean-pooled text encoders) loads. "
        "Each export is loaded back and checked against the run's PyTorch model.",
    )
    p.add_argument("run", metavar="RUN", help="a run dir written by fit or pretrain")
    p.add_argument(
        "--format",
        default="onnx",
        choices=["onnx", "torchscript", "timm", "hf"],
        help="what to write (default: onnx)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="file (onnx, torchscript) or folder (timm, hf) to write (default "
        "RUN/export/FORMAT/: model.onnx, model.pt, or the timm or hf folder)",
    )
    p.add_argument("--opset", type=int, default=18, metavar="N", help="ONNX opset (default: 18)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(handler=commands.cmd_export)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``headstart`` command; returns the exit code."""
    from headstart.errors import HeadstartError, storage_error

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed its message
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    setup_logging(quiet=args.quiet, verbose=args.verbose)
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
        user = storage_error(exc) if isinstance(exc, OSError) else None
        if user is not None:  # a full disk, a read-only folder: the user's to fix
            print(f"headstart: error: {user}", file=sys.stderr)
            return EXIT_ERROR
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

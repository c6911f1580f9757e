"""Each command's options: the groups of :mod:`headstart.config.groups` it takes, composed.

The CLI's flags of a command are its fields in kebab-case.  A command that runs fits
(``compare``, ``rank --validate``, ``adapt``, ``recommend``'s measurements) hands them
:meth:`Command.fit_options`: its own values for the fit's fields, ``FIT_FIXED`` (what the
command decides for every fit it runs, with the reason beside it), and fit's defaults for
the rest.  Kept free of heavy imports so that ``headstart --help`` and argument errors
are quick.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from headstart.config.fields import Checked, Precision, Select, option
from headstart.config.groups import (
    Adapters,
    Choosing,
    Device,
    FeatureCaching,
    Finetuning,
    Holdout,
    Inputs,
    Loading,
    Model,
    Output,
    Regularisation,
    Resumable,
    Schedule,
    Seed,
    Speed,
    Stopping,
    Texts,
    Tracking,
    Transfer,
    Trials,
)
from headstart.config.strategies import StrategyName
from headstart.config.train import TrainConfig
from headstart.errors import ConfigError

__all__ = [
    "AdaptOptions",
    "Command",
    "CompareOptions",
    "EmbedOptions",
    "FitOptions",
    "LrFindOptions",
    "PretrainOptions",
    "RankOptions",
    "RecommendOptions",
]


@dataclass(frozen=True, kw_only=True)
class Command(Checked):
    """A command's options (groups composed by inheritance; fields in reverse base order)."""

    # what the command decides for every fit it runs (fields of FitOptions)
    FIT_FIXED: ClassVar[dict[str, Any]] = {}

    def fit_options(self, **changes: Any) -> FitOptions:
        """The options of a fit this command runs: its own values for the fit's fields,
        then ``FIT_FIXED``, then ``changes``; fit's defaults for the rest."""
        names = {f.name for f in dataclasses.fields(FitOptions)}
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in names}
        return FitOptions(**{**own, **self.FIT_FIXED, **changes})


# The bases are listed last group first: a dataclass orders inherited fields from the
# last base to the first, and that order is the order of the flags in --help.
@dataclass(frozen=True, kw_only=True)
class FitOptions(
    Command,
    Tracking,
    Resumable,
    Output,
    Adapters,
    Speed,
    FeatureCaching,
    Device,
    Loading,
    Texts,
    Seed,
    Regularisation,
    Stopping,
    Holdout,
    Finetuning,
    Schedule,
    Choosing,
    Transfer,
    Model,
    Inputs,
):
    """Everything ``headstart fit`` takes; the CLI flags are these fields in kebab-case."""

    def train_config(self) -> TrainConfig:
        """How to train, once the budget is sized (``train.budget``: no ``auto`` left)."""
        if self.epochs is None or self.batch_size is None:
            raise ConfigError("size the budget first: --epochs and --batch-size are auto")
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            warmup_epochs=self.warmup_epochs,
            patience=self.patience,
            select=self.select,
            label_smoothing=self.label_smoothing,
            seed=self.seed,
            device=self.device,
            progress=self.progress,
        )


@dataclass(frozen=True, kw_only=True)
class PretrainOptions(
    Command,
    Tracking,
    Resumable,
    Output,
    Speed,
    FeatureCaching,
    Device,
    Loading,
    Texts,
    Seed,
    Regularisation,
    Stopping,
    Holdout,
    Schedule,
    Inputs,
):
    """``headstart pretrain``: train a source from scratch (``--source file:OUT`` then)."""

    FIT_FIXED: ClassVar[dict[str, Any]] = {"weights": "none", "strategy": "scratch"}

    source: str = option(
        "the architecture to train from scratch, e.g. builtin:digits-cnn",
        default="builtin:digits-cnn",
    )


@dataclass(frozen=True, kw_only=True)
class CompareOptions(
    Command,
    Trials,
    Tracking,
    Adapters,
    Speed,
    FeatureCaching,
    Device,
    Loading,
    Texts,
    Seed,
    Regularisation,
    Finetuning,
    Schedule,
    Model,
    Inputs,
):
    """``headstart compare``: the same folds for every strategy, mean +- std each."""

    # Each fold's held-out part is its validation set, and its last epoch is scored
    # (picking the best epoch on the test fold would flatter every score).
    FIT_FIXED: ClassVar[dict[str, Any]] = {"val_fraction": 0.0, "select": Select.LAST}

    strategies: str = option(
        "comma-separated strategies to compare; auto: in each fold, recommend from that "
        "fold's training part only, then train its pick",
        default="linear,partial:2,full,scratch",
    )
    folds: int = option("stratified k-fold cross-validation folds", default=5, at_least=2)
    seeds: int = option(
        "repeat the k folds with this many shuffles (seed, seed+1, ...)", default=1, at_least=1
    )
    out: str | None = option(
        "folder for compare.csv/.md/.html/.json and plots (default runs/compare-TIMESTAMP)",
        default=None,
    )
    overwrite: bool = option("replace an existing --out", default=False)
    label_fractions: str = option(
        "also train on these shares of each training fold's labels, for a plot of accuracy "
        "against labels per class, e.g. 0.1,0.25,0.5,1",
        default="1",
    )


@dataclass(frozen=True, kw_only=True)
class RecommendOptions(Command, Device, Loading, Texts, Seed, Model, Inputs):
    """``headstart recommend``: the options that matter for measuring; nothing trains."""

    FIT_FIXED: ClassVar[dict[str, Any]] = {"strategy": "auto"}

    lr: float = option("base learning rate the proposed plan starts from", default=1e-3, above=0)


@dataclass(frozen=True, kw_only=True)
class RankOptions(
    Command,
    Adapters,
    Speed,
    FeatureCaching,
    Device,
    Loading,
    Texts,
    Seed,
    Regularisation,
    Finetuning,
    Schedule,
    Transfer,
    Inputs,
):
    """``headstart rank``: score candidate sources without fine-tuning; ``--validate``
    also fine-tunes each briefly (the training flags below are for that)."""

    # Each fold's held-out part is the validation set, and the last epoch is scored.
    FIT_FIXED: ClassVar[dict[str, Any]] = {"val_fraction": 0.0, "select": Select.LAST}

    data: str = option(
        "labelled target data to score the candidates on: a folder (one sub-folder per "
        "class), a CSV (path,label) or builtin:digits[?classes=5-9&per_class=20]; for hf: "
        "text encoders, labelled texts as fit takes them",
        default="",
    )
    sources: str = option(
        "comma-separated candidates, each SPEC or SPEC@WEIGHTS (WEIGHTS as for --weights: "
        "default, none, a file or a URL), e.g. builtin:digits-cnn,builtin:digits-cnn@none",
        default="",
    )
    method: str = option(
        "logme, leep, knn, probe (linear probe), a comma-separated list, or all; the table "
        "is ranked by the first",
        default="all",
    )
    validate: bool = option(
        "also fine-tune every candidate on --folds folds and report Kendall's tau between "
        "each score and the held-out accuracy, and the seconds of both",
        default=False,
    )
    random_init: bool = option(
        "also score each candidate network randomly initialised (SPEC@none) when it is not "
        "listed: a pretrained source must score clearly above it (by more than the score's "
        "noise) to rank above it",
        default=True,
    )
    folds: int = option("stratified folds for --validate", default=5, at_least=2)
    strategy: str = option(
        parse=StrategyName,
        help="how --validate fine-tunes: full, partial:K, linear",
        default="full",
    )
    epochs: int = option(
        "training epochs of each --validate fine-tuning (more on small folds: at least 50 "
        "optimizer steps)",
        default=10,
        at_least=1,
    )


@dataclass(frozen=True, kw_only=True)
class AdaptOptions(
    Command,
    Output,
    Device,
    Loading,
    Seed,
    Regularisation,
    Holdout,
    Schedule,
    Transfer,
    Model,
    Inputs,
):
    """``headstart adapt``: labelled source-domain DATA, unlabelled --target images."""

    # The last epoch is kept (no target labels to choose by); the lr is annealed instead.
    # adapt's objective needs the images themselves each epoch: no cached head, and the
    # domain classifier's gradient reversal is kept in fp32.
    FIT_FIXED: ClassVar[dict[str, Any]] = {
        "select": Select.LAST,
        "patience": None,
        "feature_cache": False,
        "precision": Precision.FP32,
        "channels_last": False,
    }

    data: str = option(
        "labelled source-domain data: a folder (one sub-folder per class), a CSV or builtin:...",
        default="",
    )
    target: str = option(
        "unlabelled target-domain images: a folder (searched recursively; labels ignored), "
        "a CSV or builtin:... (labels dropped)",
        default="",
    )
    method: str = option(
        "dann (domain-adversarial, gradient reversal), coral (Deep CORAL) or source-only",
        default="dann",
    )
    eval: str | None = option(
        "labelled target-domain data: report the target accuracy after every epoch and "
        "evaluate the finished run on it (never used to train or to pick the epoch)",
        default=None,
    )
    strategy: str = option(
        parse=StrategyName, help="full | partial:K (which stages adapt) | scratch", default="full"
    )
    epochs: int = option("training epochs (passes over the labelled data)", default=20, at_least=1)
    # adapt's budget is not sized from the data yet (its two domains' loaders step
    # together): the rate and batch its bench measured
    lr: float = option("base learning rate (the new head's)", default=1e-3, above=0)
    batch_size: int = option("batch size", default=32, at_least=1)
    warmup_epochs: float = option(
        "linear warm-up before the cosine decay, in epochs", default=0.0, at_least=0
    )
    val_fraction: float = option(
        "fraction of DATA held out as source-domain validation (0: none)",
        default=0.0,
        at_least=0,
        below=1,
    )
    domain_hidden: int = option(
        "hidden units of DANN's domain classifier (2 layers)", default=100, at_least=1
    )
    coral_weight: float = option("weight of the CORAL loss", default=1.0, at_least=0)


@dataclass(frozen=True, kw_only=True)
class LrFindOptions(
    Command,
    Adapters,
    FeatureCaching,
    Device,
    Loading,
    Texts,
    Seed,
    Regularisation,
    Holdout,
    Finetuning,
    Transfer,
    Model,
    Inputs,
):
    """``headstart lr-find``: the learning-rate range test ``fit --lr auto`` runs, alone."""

    FIT_FIXED: ClassVar[dict[str, Any]] = {"lr": None}  # what the sweep is for

    strategy: str = option(
        parse=StrategyName,
        help="the plan whose rate to find: linear | partial:K | full | scratch | lora",
        default="full",
    )
    epochs: int | None = option(
        "the fit's epochs (they size the sweep: a tenth of the fit's steps, 30 to 100)",
        default=None,
        at_least=1,
        auto=True,
    )
    batch_size: int | None = option(
        "the fit's batch size (auto: as fit sizes it)", default=None, at_least=1, auto=True
    )
    backbone_lr_mult: float = option(
        "backbone learning rate = lr x this (full, partial): the groups keep this ratio "
        "during the sweep",
        default=0.1,
        at_least=0,
    )
    weight_decay: float = option(
        "AdamW weight decay (not on biases and norms)", default=0.01, at_least=0
    )
    out: str | None = option(
        "folder for lr_find.png and lr_find.json (default runs/lr-find-TIMESTAMP)",
        default=None,
    )
    overwrite: bool = option("replace an existing --out", default=False)


@dataclass(frozen=True, kw_only=True)
class EmbedOptions(Command, Device, Loading, Model):
    """``headstart embed``: a source's features of DATA, with the labels, to a file."""

    data: str = option(
        "images: a folder (one sub-folder per class), a CSV or builtin:...", default=""
    )
    source: str = option(
        "the pretrained model: builtin:NAME, timm:NAME, torchvision:NAME or file:RUN_DIR",
        default="builtin:digits-cnn",
    )
    out: str | None = option(
        "file to write: .npz (features, labels, classes, items), .npy (+ STEM.labels.npy and "
        "STEM.json) or .parquet (needs pyarrow)",
        default=None,
    )
    weights: str = option("default, none, a weights file or a URL", default="default")
    batch_size: int = option("batch size", default=128, at_least=1)
    image_size: int | None = option(
        "override the source's input size (square)", default=None, at_least=1
    )
    workers: int = option("data loader worker processes", default=0, at_least=0)
    cache_dir: str | None = option(
        "weights and feature cache folder (default $HEADSTART_CACHE or torch hub's)", default=None
    )
    feature_cache: bool = option(
        "take the features from (and add them to) the feature cache", default=True
    )
    overwrite: bool = option("replace an existing --out", default=False)

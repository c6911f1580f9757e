"""The options of each command, as typed dataclasses: the CLI's flags are their fields.

Kept free of heavy imports so that ``headstart --help`` and argument errors are quick.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from headstart.train import TrainConfig

__all__ = ["CompareOptions", "FitOptions", "PretrainOptions", "RecommendOptions"]


def _opt(help: str, **kw: Any) -> Any:
    """A dataclass field carrying its CLI help text (the CLI maps fields 1:1 to flags)."""
    default = kw.pop("default")
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class FitOptions:
    """Everything ``headstart fit`` takes; the CLI flags are these fields in kebab-case."""

    data: str = _opt(
        "training data: a folder (one sub-folder per class), a CSV "
        "(path,label) or builtin:digits[?classes=0-4&per_class=10]; texts: a CSV, TSV or "
        "JSONL with text and label columns, or a folder of .txt files per class",
        default="",
    )
    source: str = _opt(
        "the pretrained model: builtin:NAME, timm:NAME, torchvision:NAME, file:RUN_DIR or "
        "hf:FOLDER_OR_HUB_ID (transformers encoders, texts or images)",
        default="builtin:digits-cnn",
    )
    weights: str = _opt(
        "default (the zoo's weights), none (random), a weights file, or a URL "
        "(http(s)://...[#sha256=HEX]) fetched into the cache",
        default="default",
    )
    strategy: str = _opt(
        "linear | partial:K | full | scratch | lora | auto (measure the data, then choose)",
        default="linear",
    )
    epochs: int = _opt("training epochs", default=10)
    lr: float = _opt("base learning rate (the new head's)", default=1e-3)
    backbone_lr_mult: float = _opt(
        "backbone learning rate = lr x this (full, partial)", default=0.1
    )
    weight_decay: float = _opt("AdamW weight decay (not on biases and norms)", default=0.01)
    batch_size: int = _opt("batch size", default=32)
    val: str | None = _opt("validation data (same forms as DATA) instead of a split", default=None)
    val_fraction: float = _opt("fraction of DATA held out for validation (0: none)", default=0.2)
    seed: int = _opt("seed for the split, initialisation, shuffling and augmentation", default=0)
    patience: int | None = _opt(
        "stop after this many epochs without a better validation accuracy", default=None
    )
    select: str = _opt("keep the 'best' epoch on validation or the 'last'", default="best")
    augment: str = _opt("training augmentation: light or none", default="light")
    image_size: int | None = _opt("override the source's input size (square)", default=None)
    arch: str | None = _opt(
        "architecture of a file: source that does not record it, e.g. timm:resnet18", default=None
    )
    dropout: float = _opt("dropout before the new head", default=0.0)
    label_smoothing: float = _opt("label smoothing of the loss", default=0.0)
    warmup_epochs: float = _opt("linear warm-up before the cosine decay, in epochs", default=1.0)
    workers: int = _opt("data loader worker processes", default=0)
    device: str = _opt("auto, cpu, cuda or cuda:N", default="auto")
    cache_dir: str | None = _opt(
        "weights cache folder (default $HEADSTART_CACHE or torch hub's)", default=None
    )
    strict: bool = _opt(
        "any weights key mismatch beyond the old output layer is an error", default=False
    )
    out: str | None = _opt("run dir to write (default runs/KIND-TIMESTAMP)", default=None)
    overwrite: bool = _opt("replace an existing --out", default=False)
    layer_decay: float = _opt(
        "full, partial: each earlier stage trains at this times the next one's rate (1: off)",
        default=1.0,
    )
    lora_r: int = _opt("lora: rank of the adapters", default=8)
    lora_alpha: int = _opt("lora: scaling alpha (the update is scaled by alpha / r)", default=16)
    lora_dropout: float = _opt("lora: dropout on the adapters' input", default=0.1)
    lora_targets: str | None = _opt(
        "lora: comma-separated module names to adapt (default per architecture, e.g. "
        "query,value for BERT)",
        default=None,
    )
    text_col: str | None = _opt(
        "texts: the text column (default: text, sentence, review, content or document)",
        default=None,
    )
    label_col: str | None = _opt(
        "texts: the label column (default: label, labels, class or category)", default=None
    )
    max_length: int | None = _opt(
        "texts: truncate to this many tokens (default 128, or less if the model takes less)",
        default=None,
    )
    progress: bool = _opt("show progress bars", default=True, cli=False)

    def train_config(self) -> TrainConfig:
        from headstart.train import TrainConfig

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


@dataclass
class PretrainOptions(FitOptions):
    """``headstart pretrain``: train a source from scratch (``--source file:OUT`` then)."""

    source: str = _opt(
        "the architecture to train from scratch, e.g. builtin:digits-cnn",
        default="builtin:digits-cnn",
    )
    weights: str = _opt("starting weights (none: from scratch)", default="none", cli=False)
    strategy: str = _opt(
        "scratch trains everything from random weights", default="scratch", cli=False
    )
    epochs: int = _opt("training epochs", default=20)


@dataclass
class CompareOptions(FitOptions):
    """``headstart compare``: the same folds for every strategy, mean +- std each."""

    strategies: str = _opt(
        "comma-separated strategies to compare", default="linear,partial:2,full,scratch"
    )
    folds: int = _opt("stratified k-fold cross-validation folds", default=5)
    seeds: int = _opt("repeat the k folds with this many shuffles (seed, seed+1, ...)", default=1)
    out: str | None = _opt(
        "folder for compare.csv/.md/.html/.json and plots (default runs/compare-TIMESTAMP)",
        default=None,
    )
    # Not meaningful here: each fold's held-out part is the validation set, and the last
    # epoch is scored (picking the best epoch on the test fold would flatter every score).
    strategy: str = _opt("", default="linear", cli=False)
    val: str | None = _opt("", default=None, cli=False)
    val_fraction: float = _opt("", default=0.0, cli=False)
    select: str = _opt("", default="last", cli=False)
    patience: int | None = _opt("", default=None, cli=False)
    label_fractions: str = _opt(
        "also train on these shares of each training fold's labels, for a plot of accuracy "
        "against labels per class, e.g. 0.1,0.25,0.5,1",
        default="1",
    )


@dataclass
class RecommendOptions(FitOptions):
    """``headstart recommend``: the fit options that matter for measuring, no training."""

    lr: float = _opt("base learning rate the proposed plan starts from", default=1e-3)
    # Training-only options: not flags of recommend.
    strategy: str = _opt("", default="auto", cli=False)
    epochs: int = _opt("", default=10, cli=False)
    backbone_lr_mult: float = _opt("", default=0.1, cli=False)
    weight_decay: float = _opt("", default=0.01, cli=False)
    batch_size: int = _opt("", default=32, cli=False)
    val: str | None = _opt("", default=None, cli=False)
    val_fraction: float = _opt("", default=0.2, cli=False)
    patience: int | None = _opt("", default=None, cli=False)
    select: str = _opt("", default="best", cli=False)
    augment: str = _opt("", default="light", cli=False)
    dropout: float = _opt("", default=0.0, cli=False)
    label_smoothing: float = _opt("", default=0.0, cli=False)
    warmup_epochs: float = _opt("", default=1.0, cli=False)
    workers: int = _opt("", default=0, cli=False)
    out: str | None = _opt("", default=None, cli=False)
    overwrite: bool = _opt("", default=False, cli=False)
    layer_decay: float = _opt("", default=1.0, cli=False)
    lora_r: int = _opt("", default=8, cli=False)
    lora_alpha: int = _opt("", default=16, cli=False)
    lora_dropout: float = _opt("", default=0.1, cli=False)
    lora_targets: str | None = _opt("", default=None, cli=False)

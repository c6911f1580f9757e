"""The options of each command, as typed dataclasses: the CLI's flags are their fields.

Kept free of heavy imports so that ``headstart --help`` and argument errors are quick.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from headstart.config.train import TrainConfig


def _opt(help: str, **kw: Any) -> Any:
    """A dataclass field carrying its CLI help text (the CLI maps fields 1:1 to flags)."""
    default = kw.pop("default")
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class FitOptions:
    """Everything ``headstart fit`` takes; the CLI flags are these fields in kebab-case.

    A command's subclass names the inherited fields that are not its flags in
    ``NOT_FLAGS`` (they keep these defaults), and redeclares a field only to change it.
    """

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
    augment: str = _opt(
        "training augmentation: auto (none for linear, as in linear evaluation; light for "
        "the strategies that train the backbone), light or none",
        default="auto",
    )
    image_size: int | None = _opt("override the source's input size (square)", default=None)
    arch: str | None = _opt(
        "architecture of a file: source that does not record it, e.g. timm:resnet18", default=None
    )
    dropout: float = _opt("dropout before the new head", default=0.0)
    label_smoothing: float = _opt("label smoothing of the loss", default=0.0)
    warmup_epochs: float = _opt("linear warm-up before the cosine decay, in epochs", default=1.0)
    workers: int = _opt("data loader worker processes", default=0)
    feature_cache: bool = _opt(
        "linear: run the frozen backbone once and train the head on its cached features "
        "(kept in the cache folder's features/, reused across runs and folds); partial:K: "
        "the same for the first K (frozen) stages' output; "
        "--no-feature-cache runs the backbone every epoch",
        default=True,
    )
    feature_cache_views: int = _opt(
        "with --augment light and the feature cache: cache K augmented views of each "
        "training image (epoch e uses view e mod K); 0: linear trains its head on "
        "un-augmented features, partial:K runs its frozen stages every epoch",
        default=0,
    )
    device: str = _opt("auto, cpu, cuda or cuda:N", default="auto")
    cache_dir: str | None = _opt(
        "weights cache folder (default $HEADSTART_CACHE or torch hub's)", default=None
    )
    precision: str = _opt(
        "auto (bf16 autocast on a CUDA GPU that supports it, else fp32), fp32 or bf16",
        default="auto",
    )
    channels_last: bool = _opt("channels_last memory layout on a CUDA GPU", default=True)
    compile: bool = _opt("torch.compile the model before training", default=False)
    strict: bool = _opt(
        "any weights key mismatch beyond the old output layer is an error", default=False
    )
    out: str | None = _opt("run dir to write (default runs/KIND-TIMESTAMP)", default=None)
    overwrite: bool = _opt("replace an existing --out", default=False)
    skip_bad: bool = _opt(
        "leave out unreadable images and pictures found under two labels (counted in the "
        "run's report) instead of stopping",
        default=False,
    )
    layer_decay: float = _opt(
        "full, partial: each earlier stage trains at this times the next one's rate (1: off)",
        default=1.0,
    )
    head_epochs: int = _opt(
        "full, partial, lora: train only the new head (backbone frozen) for the first N "
        "epochs, then the plan (linear probing then fine-tuning, fastai's freeze_epochs)",
        default=0,
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
    resume: str | None = _opt(
        "continue the stopped fit whose --out was RUN from its last checkpoint, with the "
        "options saved there (DATA and other flags may be left out)",
        default=None,
    )
    checkpoint_every: int = _opt(
        "also checkpoint every N optimizer steps (0: only at the end of each epoch)", default=0
    )
    deterministic: bool = _opt(
        "use only deterministic algorithms (torch.use_deterministic_algorithms)", default=False
    )
    processes: int = _opt(
        "data-parallel processes on this machine (Accelerate; gloo on CPU, NCCL on GPUs); "
        "--batch-size stays the global batch",
        default=1,
    )
    mlflow_uri: str | None = _opt(
        "log params, per-epoch metrics and the run's files to this MLflow tracking URI, "
        "e.g. file:./mlruns or http://host:5000",
        default=None,
        metavar="URI",
    )
    tensorboard: str | None = _opt(
        "write TensorBoard events (params, per-epoch metrics, plots) under this folder",
        default=None,
        const="runs/tensorboard",
        metavar="DIR",
    )

    def train_config(self) -> TrainConfig:
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


# Fit flags that only a fit's own run uses (resumable checkpoints, several processes,
# experiment tracking), and LoRA's; commands that take neither list them in NOT_FLAGS.
_RUN_CONTROL = frozenset(
    {"resume", "checkpoint_every", "deterministic", "processes", "mlflow_uri", "tensorboard"}
)


_LORA = frozenset({"lora_r", "lora_alpha", "lora_dropout", "lora_targets"})


@dataclass
class CompareOptions(FitOptions):
    """``headstart compare``: the same folds for every strategy, mean +- std each."""

    # Fit's flags that mean nothing here (they keep fit's defaults).
    NOT_FLAGS: ClassVar[frozenset[str]] = frozenset(
        {"strategy", "val", "patience", "resume", "checkpoint_every", "processes"}
    )

    strategies: str = _opt(
        "comma-separated strategies to compare; auto: in each fold, recommend from that "
        "fold's training part only, then train its pick",
        default="linear,partial:2,full,scratch",
    )
    folds: int = _opt("stratified k-fold cross-validation folds", default=5)
    seeds: int = _opt("repeat the k folds with this many shuffles (seed, seed+1, ...)", default=1)
    out: str | None = _opt(
        "folder for compare.csv/.md/.html/.json and plots (default runs/compare-TIMESTAMP)",
        default=None,
    )
    # Not meaningful here: each fold's held-out part is the validation set, and the last
    # epoch is scored (picking the best epoch on the test fold would flatter every score).
    val_fraction: float = _opt("", default=0.0, cli=False)
    select: str = _opt("", default="last", cli=False)
    label_fractions: str = _opt(
        "also train on these shares of each training fold's labels, for a plot of accuracy "
        "against labels per class, e.g. 0.1,0.25,0.5,1",
        default="1",
    )


@dataclass
class RecommendOptions(FitOptions):
    """``headstart recommend``: the fit options that matter for measuring, no training."""

    # Fit's flags that mean nothing here (they keep fit's defaults).
    NOT_FLAGS: ClassVar[frozenset[str]] = (
        frozenset(
            {
                "epochs",
                "backbone_lr_mult",
                "weight_decay",
                "batch_size",
                "val",
                "val_fraction",
                "patience",
                "select",
                "augment",
                "dropout",
                "label_smoothing",
                "warmup_epochs",
                "workers",
                "feature_cache",
                "feature_cache_views",
                "precision",
                "channels_last",
                "compile",
                "out",
                "overwrite",
                "layer_decay",
                "head_epochs",
            }
        )
        | _RUN_CONTROL
        | _LORA
    )

    lr: float = _opt("base learning rate the proposed plan starts from", default=1e-3)
    strategy: str = _opt("", default="auto", cli=False)


@dataclass
class RankOptions(FitOptions):
    """``headstart rank``: score candidate sources without fine-tuning; ``--validate``
    also fine-tunes each briefly (the training flags below are for that)."""

    # Fit's flags that mean nothing here (they keep fit's defaults).
    # --sources names the candidates (SPEC@WEIGHTS), so no --source / --weights.
    NOT_FLAGS: ClassVar[frozenset[str]] = (
        frozenset(
            {
                "source",
                "weights",
                "val",
                "patience",
                "out",
                "overwrite",
            }
        )
        | _RUN_CONTROL
    )

    data: str = _opt(
        "labelled target data to score the candidates on: a folder (one sub-folder per "
        "class), a CSV (path,label) or builtin:digits[?classes=5-9&per_class=20]; for hf: "
        "text encoders, labelled texts as fit takes them",
        default="",
    )
    sources: str = _opt(
        "comma-separated candidates, each SPEC or SPEC@WEIGHTS (WEIGHTS as for --weights: "
        "default, none, a file or a URL), e.g. builtin:digits-cnn,builtin:digits-cnn@none",
        default="",
    )
    method: str = _opt(
        "logme, leep, knn, probe (linear probe), a comma-separated list, or all; the table "
        "is ranked by the first",
        default="all",
    )
    validate: bool = _opt(
        "also fine-tune every candidate on --folds folds and report Kendall's tau between "
        "each score and the held-out accuracy, and the seconds of both",
        default=False,
    )
    random_init: bool = _opt(
        "also score each candidate network randomly initialised (SPEC@none) when it is not "
        "listed: a pretrained source must score clearly above it (by more than the score's "
        "noise) to rank above it",
        default=True,
    )
    folds: int = _opt("stratified folds for --validate", default=5)
    strategy: str = _opt("how --validate fine-tunes: full, partial:K, linear", default="full")
    epochs: int = _opt(
        "training epochs of each --validate fine-tuning (more on small folds: at least 50 "
        "optimizer steps)",
        default=10,
    )
    # Each fold's held-out part is the validation set, and the last epoch is scored.
    val_fraction: float = _opt("", default=0.0, cli=False)
    select: str = _opt("", default="last", cli=False)


@dataclass
class AdaptOptions(FitOptions):
    """``headstart adapt``: labelled source-domain DATA, unlabelled --target images."""

    # Fit's flags that mean nothing here (they keep fit's defaults).
    NOT_FLAGS: ClassVar[frozenset[str]] = (
        frozenset(
            {
                "patience",
                "feature_cache_views",
                "compile",
                "layer_decay",
                "head_epochs",
                "text_col",
                "label_col",
                "max_length",
            }
        )
        | _RUN_CONTROL
        | _LORA
    )

    data: str = _opt(
        "labelled source-domain data: a folder (one sub-folder per class), a CSV or builtin:...",
        default="",
    )
    target: str = _opt(
        "unlabelled target-domain images: a folder (searched recursively; labels ignored), "
        "a CSV or builtin:... (labels dropped)",
        default="",
    )
    method: str = _opt(
        "dann (domain-adversarial, gradient reversal), coral (Deep CORAL) or source-only",
        default="dann",
    )
    eval: str | None = _opt(
        "labelled target-domain data: report the target accuracy after every epoch and "
        "evaluate the finished run on it (never used to train or to pick the epoch)",
        default=None,
    )
    strategy: str = _opt("full | partial:K (which stages adapt) | scratch", default="full")
    epochs: int = _opt("training epochs (passes over the labelled data)", default=20)
    val_fraction: float = _opt(
        "fraction of DATA held out as source-domain validation (0: none)", default=0.0
    )
    domain_hidden: int = _opt("hidden units of DANN's domain classifier (2 layers)", default=100)
    coral_weight: float = _opt("weight of the CORAL loss", default=1.0)
    # The last epoch is kept (no target labels to choose by); the lr is annealed instead.
    select: str = _opt("", default="last", cli=False)
    warmup_epochs: float = _opt("", default=0.0, cli=False)
    # adapt trains in its own loop: no cached head, no accelerator options.
    feature_cache: bool = _opt("", default=False, cli=False)
    precision: str = _opt("", default="fp32", cli=False)
    channels_last: bool = _opt("", default=False, cli=False)


@dataclass
class EmbedOptions:
    """``headstart embed``: a source's features of DATA, with the labels, to a file."""

    data: str = _opt(
        "images: a folder (one sub-folder per class), a CSV or builtin:...", default=""
    )
    source: str = _opt(
        "the pretrained model: builtin:NAME, timm:NAME, torchvision:NAME or file:RUN_DIR",
        default="builtin:digits-cnn",
    )
    out: str | None = _opt(
        "file to write: .npz (features, labels, classes, items), .npy (+ STEM.labels.npy and "
        "STEM.json) or .parquet (needs pyarrow)",
        default=None,
    )
    weights: str = _opt("default, none, a weights file or a URL", default="default")
    batch_size: int = _opt("batch size", default=128)
    image_size: int | None = _opt("override the source's input size (square)", default=None)
    arch: str | None = _opt("architecture of a file: source that does not record it", default=None)
    workers: int = _opt("data loader worker processes", default=0)
    device: str = _opt("auto, cpu, cuda or cuda:N", default="auto")
    cache_dir: str | None = _opt(
        "weights and feature cache folder (default $HEADSTART_CACHE or torch hub's)", default=None
    )
    feature_cache: bool = _opt(
        "take the features from (and add them to) the feature cache", default=True
    )
    strict: bool = _opt(
        "any weights key mismatch beyond the old output layer is an error", default=False
    )
    overwrite: bool = _opt("replace an existing --out", default=False)
    progress: bool = _opt("show progress bars", default=True, cli=False)

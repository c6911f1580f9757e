"""The options, in small frozen groups that each command composes (:mod:`.options`).

A group is a few fields that belong together: where the data is, which model, how long and
how fast to train, what the feature cache does, where the run goes.  Each field carries its
flag's help and its range; :class:`~headstart.config.fields.Checked` checks them when the
options are made.  A command's options class inherits the groups whose flags it takes.
"""

from __future__ import annotations

from dataclasses import dataclass

from headstart.config.fields import Augment, Checked, Precision, Select, option
from headstart.config.strategies import StrategyName, check_head_epochs
from headstart.errors import ConfigError

__all__ = [
    "Adapters",
    "Choosing",
    "Device",
    "FeatureCaching",
    "Finetuning",
    "Holdout",
    "Inputs",
    "Loading",
    "Model",
    "Output",
    "Regularisation",
    "Resumable",
    "Schedule",
    "Seed",
    "Speed",
    "Stopping",
    "Texts",
    "Tracking",
    "Transfer",
    "Trials",
    "main_address",
]


@dataclass(frozen=True, kw_only=True)
class Inputs(Checked):
    """The labelled data and how it is read."""

    data: str = option(
        "training data: a folder (one sub-folder per class), a CSV "
        "(path,label) or builtin:digits[?classes=0-4&per_class=10]; texts: a CSV, TSV or "
        "JSONL with text and label columns, or a folder of .txt files per class",
        default="",
    )
    image_size: int | None = option(
        "override the source's input size (square)", default=None, at_least=1
    )
    skip_bad: bool = option(
        "leave out unreadable images and pictures found under two labels (counted in the "
        "run's report) instead of stopping",
        default=False,
    )
    workers: int | None = option(
        "data loader worker processes (default: on a CUDA GPU up to 8 of the CPUs, one kept "
        "for the training; on the CPU none, the training's threads use them)",
        default=None,
        at_least=0,
    )


@dataclass(frozen=True, kw_only=True)
class Texts(Checked):
    """How labelled texts are read and cut."""

    text_col: str | None = option(
        "texts: the text column (default: text, sentence, review, content or document)",
        default=None,
    )
    label_col: str | None = option(
        "texts: the label column (default: label, labels, class or category)", default=None
    )
    max_length: int | None = option(
        "texts: truncate to this many tokens (default 128, or less if the model takes less)",
        default=None,
        at_least=2,
    )


@dataclass(frozen=True, kw_only=True)
class Holdout(Checked):
    """What the fit validates on."""

    val: str | None = option(
        "validation data (same forms as DATA) instead of a split", default=None
    )
    val_fraction: float | None = option(
        "fraction of DATA held out for validation (0: none; auto: 0.2 when that holds at "
        "least 200 items, else none: on small data every label trains and the last epoch "
        "is kept)",
        default=None,
        at_least=0,
        below=1,
        auto=True,
    )


@dataclass(frozen=True, kw_only=True)
class Stopping(Checked):
    """Which epoch is kept, and when training stops early."""

    patience: int | None = option(
        "stop after this many epochs without a better validation accuracy",
        default=None,
        at_least=1,
    )
    select: str = option(
        parse=Select,
        help="keep the 'best' epoch on validation or the 'last' (auto: the best with at "
        "least 200 validation items, else the last)",
        default="auto",
    )


@dataclass(frozen=True, kw_only=True)
class Seed(Checked):
    seed: int = option("seed for the split, initialisation, shuffling and augmentation", default=0)


@dataclass(frozen=True, kw_only=True)
class Model(Checked):
    """The source and its weights."""

    source: str = option(
        "the pretrained model: builtin:NAME, timm:NAME, torchvision:NAME, file:RUN_DIR or "
        "hf:FOLDER_OR_HUB_ID (transformers encoders, texts or images)",
        default="builtin:digits-cnn",
    )
    weights: str = option(
        "default (the zoo's weights), none (random), a weights file, or a URL "
        "(http(s)://...[#sha256=HEX]) fetched into the cache",
        default="default",
    )


@dataclass(frozen=True, kw_only=True)
class Loading(Checked):
    """How a source's weights are found and read."""

    arch: str | None = option(
        "architecture of a file: source that does not record it, e.g. timm:resnet18", default=None
    )
    strict: bool = option(
        "any weights key mismatch beyond the old output layer is an error", default=False
    )
    cache_dir: str | None = option(
        "weights cache folder (default $HEADSTART_CACHE or torch hub's)", default=None
    )


@dataclass(frozen=True, kw_only=True)
class Device(Checked):
    device: str = option("auto, cpu, cuda or cuda:N", default="auto")
    progress: bool = option("show progress bars", default=True, cli=False)


@dataclass(frozen=True, kw_only=True)
class Transfer(Checked):
    """What is transferred and what trains."""

    strategy: str = option(
        parse=StrategyName,
        help="auto (measure the data against the source, race the plans it leaves open on "
        "small data, train the winner) | linear | partial:K | full | scratch | lora",
        default="auto",
    )


@dataclass(frozen=True, kw_only=True)
class Choosing(Checked):
    """How ``--strategy auto`` may check what the measurements propose."""

    budget: str = option(
        "time --strategy auto may spend racing the plans the measurements leave open (on "
        "small data): a multiple of one fit (5x), seconds (600, 600s, 10m, 1h) or none",
        default="5x",
    )
    trials_in_parallel: int = option(
        "worker processes on this machine that train each round of --strategy auto's race "
        "(the plans on one fold) as the trials of an Optuna study; 1: one after another "
        "in this process",
        default=1,
        at_least=1,
    )


@dataclass(frozen=True, kw_only=True)
class Schedule(Checked):
    """How long and how fast the fit trains."""

    epochs: int | None = option(
        "training epochs (auto: enough for about 300 optimizer steps, at least 5; see the "
        "plan's budget)",
        default=None,
        at_least=1,
        auto=True,
    )
    lr: float | None = option(
        "base learning rate, the new head's (auto: a learning-rate range test on the "
        "training data picks it; the curve is saved as lr_find.png)",
        default=None,
        above=0,
        auto=True,
    )
    backbone_lr_mult: float = option(
        "backbone learning rate = lr x this (full, partial)", default=0.1, at_least=0
    )
    weight_decay: float = option(
        "AdamW weight decay (not on biases and norms)", default=0.01, at_least=0
    )
    batch_size: int | None = option(
        "batch size (auto: a tenth of the training items, rounded down to a power of two, 8 to 32)",
        default=None,
        at_least=1,
        auto=True,
    )
    warmup_epochs: float = option(
        "linear warm-up before the cosine decay, in epochs", default=1.0, at_least=0
    )


@dataclass(frozen=True, kw_only=True)
class Finetuning(Checked):
    """How a pretrained backbone is eased into training."""

    layer_decay: float = option(
        "full, partial: each earlier stage trains at this times the next one's rate (1: off)",
        default=1.0,
        above=0,
        at_most=1,
    )
    head_epochs: int = option(
        "full, partial, lora: train only the new head (backbone frozen) for the first N "
        "epochs, then the plan (linear probing then fine-tuning, fastai's freeze_epochs)",
        default=0,
        at_least=0,
    )

    def _check(self) -> None:
        # the rule ties three groups: checked where all three are present
        if isinstance(self, Transfer) and isinstance(self, Schedule):
            strategy = StrategyName(self.strategy)
            if not strategy.is_auto:
                check_head_epochs(strategy.kind, self.head_epochs, self.epochs)


@dataclass(frozen=True, kw_only=True)
class Regularisation(Checked):
    augment: str = option(
        parse=Augment,
        help="training augmentation: auto (none for linear, as in linear evaluation; light for "
        "the strategies that train the backbone), light or none",
        default="auto",
    )
    dropout: float = option("dropout before the new head", default=0.0, at_least=0, below=1)
    label_smoothing: float = option("label smoothing of the loss", default=0.0, at_least=0, below=1)


@dataclass(frozen=True, kw_only=True)
class FeatureCaching(Checked):
    feature_cache: bool = option(
        "linear: run the frozen backbone once and train the head on its cached features "
        "(kept in the cache folder's features/, reused across runs and folds); partial:K: "
        "the same for the first K (frozen) stages' output; "
        "--no-feature-cache runs the backbone every epoch",
        default=True,
    )
    solve_head: bool = option(
        "solve the new head on the frozen backbone's cached features to convergence "
        "(L-BFGS on the logistic loss, L2 strength by cross-validation, as scikit-learn's "
        "LogisticRegressionCV): linear's head is that, and with --head-epochs it replaces "
        "the head-only epochs before fine-tuning (LP-FT); --no-solve-head trains it by "
        "epochs of AdamW",
        default=True,
    )
    feature_cache_views: int = option(
        "with --augment light and the feature cache: cache K augmented views of each "
        "training image (epoch e uses view e mod K); 0: linear trains its head on "
        "un-augmented features, partial:K runs its frozen stages every epoch",
        default=0,
        at_least=0,
    )


@dataclass(frozen=True, kw_only=True)
class Speed(Checked):
    """Arithmetic and memory layout on a GPU."""

    precision: str = option(
        parse=Precision,
        help="auto (bf16 autocast on a CUDA GPU that supports it, else fp32), fp32 or bf16",
        default="auto",
    )
    channels_last: bool = option("channels_last memory layout on a CUDA GPU", default=True)
    compile: bool = option("torch.compile the model before training", default=False)


@dataclass(frozen=True, kw_only=True)
class Adapters(Checked):
    """LoRA's adapters (``--strategy lora``)."""

    lora_r: int = option("lora: rank of the adapters", default=8, at_least=1)
    lora_alpha: int = option(
        "lora: scaling alpha (the update is scaled by alpha / r)", default=16, above=0
    )
    lora_dropout: float = option(
        "lora: dropout on the adapters' input", default=0.1, at_least=0, below=1
    )
    lora_targets: str | None = option(
        "lora: comma-separated module names to adapt (default per architecture, e.g. "
        "query,value for BERT)",
        default=None,
    )


@dataclass(frozen=True, kw_only=True)
class Output(Checked):
    out: str | None = option("run dir to write (default runs/KIND-TIMESTAMP)", default=None)
    overwrite: bool = option("replace an existing --out", default=False)


@dataclass(frozen=True, kw_only=True)
class Resumable(Checked):
    """A fit's own run: checkpoints to resume from, several processes."""

    resume: str | None = option(
        "continue the stopped fit whose --out was RUN from its last checkpoint, with the "
        "options saved there (DATA and other flags may be left out)",
        default=None,
    )
    checkpoint_every: int = option(
        "also checkpoint every N optimizer steps (0: only at the end of each epoch)",
        default=0,
        at_least=0,
    )
    processes: int = option(
        "data-parallel processes on this machine (Accelerate; gloo on CPU, NCCL on GPUs); "
        "--batch-size stays the global batch",
        default=1,
        at_least=1,
    )
    nodes: int = option(
        "machines in the data-parallel group, each running the same command with its own "
        "--node-rank and --processes per machine; --out must be a folder all of them see",
        default=1,
        at_least=1,
    )
    node_rank: int = option(
        "this machine's place in the group, 0 to --nodes - 1; machine 0 is the main one "
        "(it writes the run dir and the checkpoints)",
        default=0,
        at_least=0,
    )
    main_address: str | None = option(
        "with --nodes > 1: where the group meets, the main machine's HOST:PORT as the "
        "others reach it (torch.distributed's MASTER_ADDR and MASTER_PORT)",
        default=None,
        metavar="HOST:PORT",
    )

    def _check(self) -> None:
        if self.node_rank >= self.nodes:
            raise ConfigError(
                f"--node-rank {self.node_rank} with --nodes {self.nodes}: the ranks are 0 "
                f"to {self.nodes - 1}"
            )
        if self.nodes > 1 and self.main_address is None:
            raise ConfigError(
                f"--nodes {self.nodes}: give --main-address HOST:PORT, the main machine's "
                "address and a free port, the same on every machine"
            )
        if self.main_address is not None:
            main_address(self.main_address)


def main_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as ``(host, port)``, or a :class:`ConfigError`."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--main-address {text!r}: give HOST:PORT, e.g. 10.0.0.1:29500")
    return host, int(port)


@dataclass(frozen=True, kw_only=True)
class Tracking(Checked):
    """Reproducibility and experiment tracking."""

    deterministic: bool = option(
        "use only deterministic algorithms (torch.use_deterministic_algorithms)", default=False
    )
    mlflow_uri: str | None = option(
        "log params, per-epoch metrics and the run's files to this MLflow tracking URI, "
        "e.g. file:./mlruns or http://host:5000",
        default=None,
        metavar="URI",
    )
    tensorboard: str | None = option(
        "write TensorBoard events (params, per-epoch metrics, plots) under this folder",
        default=None,
        const="runs/tensorboard",
        metavar="DIR",
    )


@dataclass(frozen=True, kw_only=True)
class Trials(Checked):
    """How ``compare``'s trials (one strategy on one fold each) run: one after another in
    this process, or as the trials of an Optuna study, by several workers and machines."""

    trials_in_parallel: int = option(
        "worker processes on this machine that run the trials (one strategy on one fold "
        "each) as an Optuna study's; 1: one after another in this process (unless "
        "--storage is given)",
        default=1,
        at_least=1,
    )
    storage: str | None = option(
        "the Optuna storage the trials' study lives in, shared by every machine that works "
        "on it: postgresql+psycopg://USER:PASSWORD@HOST:5432/DB (many machines; a "
        "SQLAlchemy URL), journal:PATH (Optuna's journal file); default with "
        "--trials-in-parallel > 1: journal:OUT/trials.log",
        default=None,
        metavar="URL",
    )
    study: str | None = option(
        "the study's name in --storage (default: compare- and a hash of what the trials "
        "compute, so the same command on every machine joins one study)",
        default=None,
        metavar="NAME",
    )

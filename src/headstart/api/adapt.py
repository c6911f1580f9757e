"""``headstart adapt``: train on labelled source-domain data for an unlabelled target domain.

Three methods, one training loop (the labelled batches drive the epochs; unlabelled target
batches are drawn alongside, cycling):

- ``dann`` -- Domain-Adversarial Neural Networks (Y. Ganin, V. Lempitsky, "Unsupervised
  Domain Adaptation by Backpropagation", ICML 2015; Ganin et al., "Domain-Adversarial
  Training of Neural Networks", JMLR 2016).  A domain classifier on the backbone's
  features learns to tell source from target; between it and the backbone a *gradient
  reversal layer* is the identity forward and multiplies the gradient by ``-lambda``
  backward, so the backbone learns features the domain classifier cannot separate while
  the label head learns the task.  ``lambda`` follows the paper's schedule
  ``2 / (1 + exp(-gamma p)) - 1`` (gamma = 10) with ``p`` the training progress from 0
  to 1, which keeps the noisy early domain signal from swamping the features.
- ``coral`` -- Deep CORAL (B. Sun, K. Saenko, "Deep CORAL: Correlation Alignment for
  Deep Domain Adaptation", ECCV 2016 workshops): the non-adversarial baseline; the loss
  adds ``|C_S - C_T|_F^2 / (4 d^2)``, the distance between the source and target feature
  covariances.
- ``source-only`` -- the same network, plan and schedule trained on the labelled data
  alone: what adaptation has to beat.

For all three the learning rate follows the papers' annealing ``mu_p = mu_0 / (1 + alpha
p)^beta`` (alpha = 10, beta = 0.75) on the plan's AdamW groups (head at ``--lr``,
backbone at ``--lr x --backbone-lr-mult``; the domain classifier at ``--lr``).  For
``dann`` and ``coral`` the source and target batches go through the backbone together,
so BatchNorm normalises both with shared statistics; ``source-only`` never sees a
target image.  No target label is used for training or for choosing the epoch (the last
epoch is kept); with ``--eval`` the target accuracy is measured after every epoch for
the record, and the finished run is evaluated on it (``RUN/eval``).  The run dir is the
same as ``fit``'s, so ``predict`` and ``evaluate`` work on it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from headstart.api.predict import evaluate
from headstart.choose.report import plot_curves, write_report_md
from headstart.config.options import AdaptOptions
from headstart.data.images import load_data
from headstart.data.labelled import UNLABELLED, LabeledData, list_inputs
from headstart.data.transforms import resolve_augment
from headstart.errors import ConfigError, DataError
from headstart.plan.apply import apply_plan, set_train_mode
from headstart.plan.make import format_plan, make_plan
from headstart.rundir import prepare_out, write_run
from headstart.runtime import resolve_device, seed_everything
from headstart.sources.target import TargetModel
from headstart.train.assemble import (
    _build_source,
    _default_out,
    _loader,
    _split,
    check_options,
    load_training_data,
)
from headstart.train.loop import EVAL_BATCH, predict_loader

__all__ = [
    "METHODS",
    "AdaptResult",
    "DomainClassifier",
    "GradientReversal",
    "adapt",
    "annealed_lr",
    "coral_loss",
    "dann_lambda",
    "grad_reverse",
    "load_unlabelled",
]

log = logging.getLogger(__name__)

METHODS = ("dann", "coral", "source-only")
# The papers' constants: lambda's schedule (Ganin & Lempitsky) and the lr annealing.
DANN_GAMMA = 10.0
ANNEAL_ALPHA = 10.0
ANNEAL_BETA = 0.75


# --------------------------------------------------------------------------- pieces


class GradientReversal(torch.autograd.Function):
    """Identity forward; the gradient times ``-lambda`` backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lambd: float) -> torch.Tensor:
        ctx.lambd = float(lambd)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.lambd * grad, None


def grad_reverse(x: torch.Tensor, lambd: float) -> torch.Tensor:
    """``x`` unchanged, with its gradient multiplied by ``-lambd`` on the way back."""
    out: torch.Tensor = GradientReversal.apply(x, lambd)
    return out


def dann_lambda(progress: float, gamma: float = DANN_GAMMA) -> float:
    """The adaptation factor ``2 / (1 + exp(-gamma p)) - 1``: 0 at the start, -> 1."""
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


def annealed_lr(progress: float, alpha: float = ANNEAL_ALPHA, beta: float = ANNEAL_BETA) -> float:
    """The factor ``1 / (1 + alpha p)^beta`` on the initial learning rate."""
    return float(1.0 / (1.0 + alpha * progress) ** beta)


def coral_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Deep CORAL: ``|C_S - C_T|_F^2 / (4 d^2)`` for features ``[n, d]`` of each domain,
    ``C`` the unbiased covariance (each domain needs at least 2 rows)."""
    if source.ndim != 2 or target.ndim != 2 or source.shape[1] != target.shape[1]:
        raise ConfigError(
            f"CORAL needs [n, d] features of equal d (got {tuple(source.shape)}, "
            f"{tuple(target.shape)})"
        )
    d = source.shape[1]

    def cov(x: torch.Tensor) -> torch.Tensor:
        xc = x - x.mean(dim=0, keepdim=True)
        return xc.T @ xc / (x.shape[0] - 1)

    return ((cov(source) - cov(target)) ** 2).sum() / (4 * d * d)


class DomainClassifier(nn.Module):
    """Features -> ``hidden`` ReLU units -> one logit: "is this a target image?"."""

    def __init__(self, feature_dim: int, hidden: int = 100) -> None:
        super().__init__()
        if hidden < 1:
            raise ConfigError(f"--domain-hidden must be at least 1 (got {hidden})")
        self.net = nn.Sequential(
            nn.Linear(feature_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 1),
        )

    def forward(self, features: torch.Tensor, lambd: float) -> torch.Tensor:
        return self.net(grad_reverse(features, lambd)).squeeze(1)


def load_unlabelled(spec: str, *, allow_hflip: bool) -> LabeledData:
    """The target domain's images, labels (if any) ignored.

    A folder is searched for images recursively (class folders or not); a CSV or a
    ``builtin:`` set is loaded as data and its labels dropped.
    """
    path = Path(spec).expanduser()
    if not spec.startswith("builtin:") and path.is_dir():
        try:
            items = list_inputs([path])
        except DataError as exc:
            raise DataError(f"--target {spec}: {exc}") from None
        data = LabeledData(
            spec=spec,
            classes=[],
            items=list(items),
            targets=np.full(len(items), UNLABELLED, dtype=np.int64),
        )
    else:
        try:
            labelled = load_data(spec)
        except DataError as exc:
            raise DataError(f"--target: {exc}") from None
        data = LabeledData(
            spec=spec,
            classes=[],
            items=labelled.items,
            targets=np.full(len(labelled), UNLABELLED, dtype=np.int64),
        )
    if len(data) < 2:
        raise DataError(f"--target {spec}: {len(data)} image(s); adaptation needs at least 2")
    data.allow_hflip = allow_hflip
    return data


# --------------------------------------------------------------------------- training


@dataclass
class AdaptResult:
    run_dir: Path
    method: str
    metrics: dict[str, Any]
    timings: dict[str, float]
    rows: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "method": self.method,
            "metrics": self.metrics,
            "timings": self.timings,
        }


def _cycle(loader: Any) -> Any:
    """The loader again and again, each pass a new epoch of its sampler (a new order)."""
    passes = 0
    while True:
        passes += 1
        _set_epoch(loader, passes)
        yield from loader


def _set_epoch(loader: Any, epoch: int) -> None:
    sampler: Any = getattr(loader, "batch_sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


def adapt(options: AdaptOptions) -> AdaptResult:
    """Train ``options.source`` on the labelled data for the unlabelled ``options.target``
    by ``options.method``; write a run dir (as ``fit`` does) and, with ``options.eval``,
    report the target accuracy."""

    t_start = time.perf_counter()
    if options.method not in METHODS:
        raise ConfigError(f"--method {options.method!r}; valid: {', '.join(METHODS)}")
    if not options.target:
        raise ConfigError("--target: give the unlabelled target-domain images (a folder)")
    if options.coral_weight < 0:
        raise ConfigError(f"--coral-weight must be >= 0 (got {options.coral_weight})")
    config = options.train_config()
    # --augment auto: light for the strategies that train the backbone (as fit)
    options = replace(options, augment=resolve_augment(options.augment, options.strategy))
    out = prepare_out(options.out or _default_out("adapt"), overwrite=options.overwrite)
    check_options(options)
    data = load_training_data(options)
    train_data, val_data = _split(options, data)
    target = load_unlabelled(options.target, allow_hflip=data.allow_hflip)
    eval_data = (
        load_data(
            options.eval, classes=data.classes, skip_bad=options.skip_bad, progress=options.progress
        )
        if options.eval
        else None
    )
    if eval_data is not None and not len(eval_data):
        raise DataError(f"--eval {options.eval}: no items")

    generator = seed_everything(options.seed)
    source = _build_source(options, scratch=options.strategy == "scratch")
    plan = make_plan(
        options.strategy,
        source.stage_names,
        lr=options.lr,
        backbone_lr_mult=options.backbone_lr_mult,
        weight_decay=options.weight_decay,
    )
    if options.method != "source-only" and not plan.trainable_stages:
        raise ConfigError(
            f"--method {options.method} adapts the backbone's features, but --strategy "
            f"{options.strategy} trains none of it; use full or partial:K"
        )
    log.info("source: %s (%s)", source.spec, source.weights.description)
    log.info("%s", format_plan(plan))
    torch.manual_seed(options.seed)
    model = TargetModel(source.backbone, len(data.classes), dropout=options.dropout)
    domain = DomainClassifier(source.feature_dim, options.domain_hidden)
    device = resolve_device(options.device)
    model.to(device)
    domain.to(device)
    groups = apply_plan(model, plan)
    if options.method == "dann":
        groups.append(
            {
                "name": "domain",
                "params": list(domain.parameters()),
                "lr": plan.head_lr,
                "weight_decay": plan.weight_decay,
            }
        )
    optimizer = torch.optim.AdamW(groups)

    def head_lr_now() -> float:
        return float(next(g["lr"] for g in optimizer.param_groups if g["name"] == "head"))

    pre = source.preprocessing
    source_loader = _loader(
        train_data,
        pre,
        train=True,
        augment=options.augment,
        batch_size=options.batch_size,
        workers=options.workers,
        generator=generator,
        seed=options.seed,
    )
    target_loader = _loader(
        target,
        pre,
        train=True,
        augment=options.augment,
        batch_size=options.batch_size,
        workers=options.workers,
        generator=torch.Generator().manual_seed(options.seed + 1),
        seed=options.seed + 1,
    )
    eval_batch = max(options.batch_size, EVAL_BATCH)
    val_loader = (
        _loader(
            val_data,
            pre,
            train=False,
            augment="none",
            batch_size=eval_batch,
            workers=options.workers,
        )
        if val_data is not None and len(val_data)
        else None
    )
    eval_loader = (
        _loader(
            eval_data,
            pre,
            train=False,
            augment="none",
            batch_size=eval_batch,
            workers=options.workers,
        )
        if eval_data is not None
        else None
    )
    steps_per_epoch = max(1, len(source_loader))
    total = config.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: annealed_lr(min(1.0, step / total))
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    targets_iter = _cycle(target_loader)
    t_loaded = time.perf_counter()

    rows: list[dict[str, Any]] = []
    step = 0
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        set_train_mode(model, plan, True)
        domain.train()
        sums = {"loss": 0.0, "cls": 0.0, "align": 0.0, "dom_correct": 0.0, "dom_seen": 0.0}
        correct = seen = 0
        lambd = 0.0
        _set_epoch(source_loader, epoch)
        for xs, ys in source_loader:
            progress = step / total
            lambd = dann_lambda(progress)
            xs, ys = xs.to(device), ys.to(device)
            if options.method == "source-only":
                feats_s = model.backbone(xs)
                align = torch.zeros((), device=device)
            else:
                xt, _ = next(targets_iter)
                xt = xt.to(device)
                feats = model.backbone(torch.cat([xs, xt]))
                feats_s, feats_t = feats[: len(xs)], feats[len(xs) :]
                if options.method == "dann":
                    is_target = torch.cat(
                        [torch.zeros(len(xs), device=device), torch.ones(len(xt), device=device)]
                    )
                    logits_d = domain(feats, lambd)
                    align = nn.functional.binary_cross_entropy_with_logits(logits_d, is_target)
                    sums["dom_correct"] += float(((logits_d > 0).float() == is_target).sum())
                    sums["dom_seen"] += len(is_target)
                else:
                    align = options.coral_weight * coral_loss(feats_s.float(), feats_t.float())
            logits = model.head(model.dropout(feats_s))
            cls = loss_fn(logits, ys)
            loss = cls + align
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            n = len(ys)
            sums["loss"] += loss.item() * n
            sums["cls"] += cls.item() * n
            sums["align"] += align.item() * n
            correct += int((logits.argmax(1) == ys).sum())
            seen += n
        val = predict_loader(model, val_loader, device) if val_loader is not None else None
        tgt = predict_loader(model, eval_loader, device) if eval_loader is not None else None
        row = {
            "epoch": epoch,
            "train_loss": sums["cls"] / max(1, seen),
            "train_acc": correct / max(1, seen),
            "val_loss": val.loss if val else None,
            "val_acc": val.accuracy if val else None,
            "val_f1": val.macro_f1 if val else None,
            "align_loss": sums["align"] / max(1, seen),
            "domain_acc": sums["dom_correct"] / sums["dom_seen"] if sums["dom_seen"] else None,
            "lambda": lambd if options.method == "dann" else None,
            "lr_head": head_lr_now(),
            "target_acc": tgt.accuracy if tgt else None,
            "seconds": time.perf_counter() - t0,
        }
        rows.append(row)
        log.info(
            "epoch %d/%d  loss %.4f  acc %.3f  %s%s%s(%.1fs)",
            epoch,
            config.epochs,
            row["train_loss"],
            row["train_acc"],
            f"{options.method} loss {row['align_loss']:.4f}  "
            if options.method != "source-only"
            else "",
            f"domain acc {row['domain_acc']:.3f}  " if row["domain_acc"] is not None else "",
            f"target acc {row['target_acc']:.3f}  " if row["target_acc"] is not None else "",
            row["seconds"],
        )
    t_trained = time.perf_counter()
    model.cpu()
    model.eval()
    last = rows[-1]
    metrics = {
        "best_epoch": len(rows),
        "epochs_run": len(rows),
        "stopped_early": False,
        "train_loss": last["train_loss"],
        "train_acc": last["train_acc"],
        "val_loss": last["val_loss"],
        "val_acc": last["val_acc"],
        "val_f1": last["val_f1"],
        "target_acc": last["target_acc"],
        "domain_acc": last["domain_acc"],
    }
    timings = {"load_s": t_loaded - t_start, "train_s": t_trained - t_loaded}
    meta: dict[str, Any] = {
        "kind": "adapt",
        "source": source.describe(),
        "classes": list(data.classes),
        "preprocessing": pre.to_dict(),
        "plan": plan.to_dict(),
        "dropout": options.dropout,
        "data": {
            "train": train_data.describe(),
            "val": val_data.describe() if val_data is not None else None,
            "spec": options.data,
        },
        "adapt": {
            "method": options.method,
            "target": {"spec": options.target, "n_items": len(target)},
            "eval": options.eval,
            "lambda_schedule": f"2/(1+exp(-{DANN_GAMMA:g} p))-1"
            if options.method == "dann"
            else None,
            "lr_annealing": f"lr0/(1+{ANNEAL_ALPHA:g} p)^{ANNEAL_BETA:g}",
        },
        "metrics": metrics,
        "config": {k: v for k, v in asdict(options).items() if k != "progress"},
        "timings": timings,
    }

    def extras(folder: Path) -> None:
        title = f"{source.spec} · adapt {options.method} · {options.data} -> {options.target}"
        plot_curves(rows, folder / "curves.png", title=title)
        timings["total_s"] = time.perf_counter() - t_start
        write_report_md(meta, rows, folder / "report.md")

    run_dir = write_run(
        out, model=model, meta=meta, metrics_rows=rows, extras=extras, overwrite=options.overwrite
    )
    if options.eval:
        result = evaluate(run_dir, options.eval, device=options.device)
        metrics["target_acc"] = result.accuracy
        metrics["target_f1"] = result.macro_f1
    timings["total_s"] = time.perf_counter() - t_start
    log.info("run dir: %s", run_dir)
    return AdaptResult(
        run_dir=run_dir, method=options.method, metrics=metrics, timings=timings, rows=rows
    )

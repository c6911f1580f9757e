"""Domain adaptation's objective on the one training loop: DANN (a gradient-reversed domain
classifier, Ganin et al. 2016), CORAL (matching feature covariances, Sun & Saenko 2016) or
source-only, with the papers' annealed learning rate.  ``headstart adapt``
(:mod:`headstart.api.adapt`) supplies it to :func:`headstart.train.loop.train`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from headstart.config.options import AdaptOptions
from headstart.config.train import TrainConfig
from headstart.errors import ConfigError
from headstart.plan.make import Plan
from headstart.sources.target import TargetModel
from headstart.train.loop import (
    EpochMetrics,
    Objective,
    StepLoss,
    predict_loader,
)
from headstart.train.parallel import Group

__all__ = [
    "METHODS",
    "DomainClassifier",
    "DomainObjective",
    "GradientReversal",
    "annealed_lr",
    "coral_loss",
    "dann_lambda",
    "grad_reverse",
]

log = logging.getLogger(__name__)


METHODS = ("dann", "coral", "source-only")


# The papers' constants: lambda's schedule (Ganin & Lempitsky) and the lr annealing.
DANN_GAMMA = 10.0


ANNEAL_ALPHA = 10.0


ANNEAL_BETA = 0.75


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
        self.net = nn.Sequential(
            nn.Linear(feature_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 1),
        )

    def forward(self, features: torch.Tensor, lambd: float) -> torch.Tensor:
        return self.net(grad_reverse(features, lambd)).squeeze(1)


def _cycle(loader: Any) -> Any:
    """The loader again and again, each pass a new epoch of its sampler (a new order)."""
    passes = 0
    while True:
        passes += 1
        sampler: Any = getattr(loader, "batch_sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(passes)
        yield from loader


class DomainObjective(Objective):
    """adapt's step in the training loop: cross-entropy on the labelled batch plus the
    method's alignment loss on the backbone's features of it and of a target batch
    (``dann``: the domain classifier through gradient reversal; ``coral``: the
    covariances' distance; ``source-only``: none, no target batch); plain AdamW with the
    domain classifier's own group; the papers' annealed learning rate.  Each epoch's
    row of adapt's metrics (target accuracy on ``eval_loader`` too) goes to ``rows``."""

    def __init__(
        self, options: AdaptOptions, model: TargetModel, domain: DomainClassifier, plan: Plan,
        targets: DataLoader[Any], eval_loader: DataLoader[Any] | None, device: torch.device,
    ) -> None:  # fmt: skip
        super().__init__(options.label_smoothing)
        self.method, self.coral_weight, self.epochs = (
            options.method, options.coral_weight, options.epochs
        )  # fmt: skip
        self.model, self.domain, self.plan = model, domain, plan
        self.targets = _cycle(targets)
        self.eval_loader, self.device = eval_loader, device
        self.rows: list[dict[str, Any]] = []
        self._optimizer: torch.optim.Optimizer | None = None  # made by the loop's call
        self.total_steps = 1
        self.lambd, self.t0, self.sums = 0.0, 0.0, dict.fromkeys(_SUMS, 0.0)

    def optimizer(self, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        if self.method == "dann":
            domain_group = {
                "name": "domain",
                "params": list(self.domain.parameters()),
                "lr": self.plan.head_lr,
                "weight_decay": self.plan.weight_decay,
            }
            groups = [*groups, domain_group]
        # torch's default AdamW kernel, as adapt has always trained (fused rounds otherwise)
        self._optimizer = torch.optim.AdamW(groups)
        return self._optimizer

    def schedule(
        self, config: TrainConfig, steps_per_epoch: int, head_epochs: int
    ) -> Callable[[int], float]:
        """``lr0 / (1 + alpha p)^beta``, ``p`` the run's progress (DANN's lambda too)."""
        total = self.total_steps = config.epochs * steps_per_epoch
        return lambda step: annealed_lr(min(1.0, step / total))

    def start_epoch(self, epoch: int) -> None:
        self.t0 = time.perf_counter()
        self.domain.train()
        self.lambd, self.sums = 0.0, dict.fromkeys(_SUMS, 0.0)

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, group: Group, global_n: int,
        step: int,
    ) -> StepLoss:  # fmt: skip
        self.lambd = dann_lambda(step / self.total_steps)
        m = self.model  # one process: the model the loop runs is this one
        if self.method == "source-only":
            feats_s = m.backbone(x)
            align = torch.zeros((), device=x.device)
        else:
            xt = next(self.targets)[0].to(x.device)
            # together, so that BatchNorm normalises both domains with shared statistics
            feats = m.backbone(torch.cat([x, xt]))
            # one slice per domain, used for both losses: autograd then sums the head's
            # and the alignment's gradients in the order adapt's numbers were made with
            feats_s, feats_t = feats[: len(x)], feats[len(x) :]
            align = self._align(feats, feats_s, feats_t)
        logits = m.head(m.dropout(feats_s))
        cls = self.loss_fn(logits, y)
        self.sums["align"] += align.item() * len(y)
        self.sums["seen"] += len(y)
        return StepLoss(cls + align, logits, cls.item() * len(y))

    def _align(
        self, feats: torch.Tensor, feats_s: torch.Tensor, feats_t: torch.Tensor
    ) -> torch.Tensor:
        """The alignment loss on both domains' features (``feats``: the two together)."""
        if self.method == "coral":
            return self.coral_weight * coral_loss(feats_s.float(), feats_t.float())
        is_target = torch.cat(
            [
                torch.zeros(len(feats_s), device=feats.device),
                torch.ones(len(feats_t), device=feats.device),
            ]
        )
        logits_d = self.domain(feats, self.lambd)
        self.sums["dom_correct"] += float(((logits_d > 0).float() == is_target).sum())
        self.sums["dom_seen"] += len(is_target)
        return nn.functional.binary_cross_entropy_with_logits(logits_d, is_target)

    def end_epoch(self, row: EpochMetrics) -> None:
        tgt = (
            predict_loader(self.model, self.eval_loader, self.device)
            if self.eval_loader is not None
            else None
        )
        sums, optimizer = self.sums, self._optimizer
        assert optimizer is not None, "the loop makes the optimizer before any epoch"
        self.rows.append(
            {
                "epoch": row.epoch,
                "train_loss": row.train_loss,
                "train_acc": row.train_acc,
                "val_loss": row.val_loss,
                "val_acc": row.val_acc,
                "val_f1": row.val_f1,
                "align_loss": sums["align"] / max(1, sums["seen"]),
                "domain_acc": sums["dom_correct"] / sums["dom_seen"] if sums["dom_seen"] else None,
                "lambda": self.lambd if self.method == "dann" else None,
                "lr_head": float(
                    next(g["lr"] for g in optimizer.param_groups if g["name"] == "head")
                ),
                "target_acc": tgt.accuracy if tgt else None,
                "seconds": time.perf_counter() - self.t0,
            }
        )
        log.debug(_format_row(self.rows[-1], self.method, self.epochs))  # -v: every epoch


_SUMS = ("align", "seen", "dom_correct", "dom_seen")


def _format_row(row: dict[str, Any], method: str, epochs: int) -> str:
    return "epoch {}/{}  loss {:.4f}  acc {:.3f}  {}{}{}({:.1f}s)".format(
        row["epoch"],
        epochs,
        row["train_loss"],
        row["train_acc"],
        f"{method} loss {row['align_loss']:.4f}  " if method != "source-only" else "",
        f"domain acc {row['domain_acc']:.3f}  " if row["domain_acc"] is not None else "",
        f"target acc {row['target_acc']:.3f}  " if row["target_acc"] is not None else "",
        row["seconds"],
    )

"""The learning-rate range test: sweep the rate up, watch the loss, pick a rate.

Smith's range test ("Cyclical Learning Rates for Training Neural Networks", 2017) as
fastai's ``Learner.lr_find`` and Lightning's ``Tuner.lr_find`` run it:
:func:`lr_range_test` takes one optimizer step per rate, the rate growing exponentially
from ``start_lr`` to ``end_lr``, records the loss of each step's batch smoothed by a
bias-corrected moving average (fastai's ``AvgSmoothLoss``, beta 0.98), stops once that
loss exceeds ``diverge`` (4) times the best so far, and puts the model, the optimizer
and every random generator back as they were, so the training that follows runs as if
there had been no test.  :func:`suggest` reads a rate off the curve, by default with
fastai's ``valley`` rule; :func:`plot_lr_curve` draws it.

The rules (:data:`RULES`: ``valley``, ``steepest``, ``minimum/10``) and the
fallback are :mod:`headstart.train.lr_rules`'s; the save and restore is
:class:`headstart.train.snapshot.Snapshot`.

Param groups keep their ratios: a group whose rate is ``mult`` times the reference
group's (the ``head`` group of :func:`headstart.plan.apply.apply_plan`, else the fastest)
moves at ``mult`` times the swept rate, so the curve and the suggestion are in the
reference group's rate, as ``--lr`` is (a :class:`~headstart.plan.make.Plan`'s
``head_lr``; the backbone at ``lr * backbone_lr_mult``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from headstart._io import atomic_path
from headstart._plot import styled
from headstart.errors import ConfigError
from headstart.train.lr_rules import (
    FALLBACK_LR,
    FLAT_TOLERANCE,
    MIN_POINTS,
    RULES,
    SKIP_END,
    check_rule,
    suggest,
    suggest_explained,
)
from headstart.train.snapshot import Snapshot

__all__ = [
    "FALLBACK_LR",
    "FLAT_TOLERANCE",
    "MIN_POINTS",
    "RULES",
    "SKIP_END",
    "LrCurve",
    "lr_range_test",
    "plot_lr_curve",
    "suggest",
    "suggest_explained",
]

log = logging.getLogger(__name__)

Batches = Iterable[tuple[Tensor, Tensor]] | Callable[[], Iterable[tuple[Tensor, Tensor]]]
LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class LrCurve:
    """A range test's result.  ``lrs`` are the reference group's rates (``group``), one
    per step; ``losses`` the smoothed losses, ``raw_losses`` the batches' own; only
    finite losses are recorded.  ``stopped`` says why the sweep ended, ``steps`` how
    many batches it evaluated (one more than ``len(lrs)`` when the last loss was not
    finite), ``seconds`` how long it took."""

    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    raw_losses: tuple[float, ...]
    suggestion: float
    rule: str
    stopped: str
    steps: int
    seconds: float
    group: str = "lr"

    def to_dict(self) -> dict[str, Any]:
        return {
            "lrs": [float(v) for v in self.lrs],
            "losses": [float(v) for v in self.losses],
            "raw_losses": [float(v) for v in self.raw_losses],
            "suggestion": float(self.suggestion),
            "rule": self.rule,
            "stopped": self.stopped,
            "steps": int(self.steps),
            "seconds": float(self.seconds),
            "group": self.group,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LrCurve:
        return cls(
            lrs=tuple(float(v) for v in d["lrs"]),
            losses=tuple(float(v) for v in d["losses"]),
            raw_losses=tuple(float(v) for v in d["raw_losses"]),
            suggestion=float(d["suggestion"]),
            rule=str(d["rule"]),
            stopped=str(d["stopped"]),
            steps=int(d["steps"]),
            seconds=float(d["seconds"]),
            group=str(d.get("group", "lr")),
        )


# --- the sweep --------------------------------------------------------------------------


def lr_range_test(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    loss_fn: LossFn,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    smooth: float = 0.98,
    diverge: float | None = 4.0,
    rule: str = "valley",
    device: torch.device | str | None = None,
    generators: Sequence[torch.Generator] = (),
) -> LrCurve:
    """Sweep the learning rate from ``start_lr`` to ``end_lr`` over ``num_steps``
    optimizer steps (exponentially, both ends included) and suggest a rate by ``rule``.

    ``batches``: ``(inputs, targets)`` pairs, an iterable gone through again when it
    runs out (a list, a DataLoader) or a function returning a fresh iterable each time;
    a one-shot iterator ends the sweep when it is exhausted.  ``loss_fn(model, inputs,
    targets)`` returns the scalar loss to minimise; the model's train/eval modes are the
    caller's (set them before, as for training).  Each step: every param group at the
    swept rate times its ratio to the reference group, the loss, ``backward``, ``step``.
    The sweep stops early when the smoothed loss exceeds ``diverge`` times the best so
    far (``None``: never; only checked while the best is positive) or a loss is not
    finite.  ``device``: where the batches go (default: the model's first parameter's).

    Afterwards the model's parameters and buffers, their gradients and train/eval modes,
    the optimizer's state and hyper-parameters (its ``param_groups`` the same dicts), and
    the random generators (Python's, NumPy's, torch's CPU and CUDA ones, and any in
    ``generators``, e.g. the training loader's) are as they were, bit for bit, also when
    the sweep raises.
    """
    _check_settings(start_lr, end_lr, num_steps, smooth, diverge, rule)
    mults, group_name = _group_ratios(optimizer.param_groups)
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    rates = [start_lr * (end_lr / start_lr) ** (i / (num_steps - 1)) for i in range(num_steps)]

    saved = Snapshot(model, optimizer, device, generators)
    t0 = time.perf_counter()
    try:
        trace = _sweep(model, optimizer, mults, batches, loss_fn, rates, smooth, diverge, device)
    finally:
        saved.restore()
    seconds = time.perf_counter() - t0
    stopped = trace.stopped or f"reached end_lr {end_lr:g}"
    lr, why = suggest_explained(trace.lrs, trace.smoothed, rule, skip_begin=num_steps // 10)
    log.debug(  # the callers say the rate (train.auto.find_lr, lr-find)
        "learning-rate range test: %d steps, %s; suggestion %.3g (%s)",
        trace.steps,
        stopped,
        lr,
        why,
    )
    return LrCurve(
        lrs=tuple(trace.lrs),
        losses=tuple(trace.smoothed),
        raw_losses=tuple(trace.raw),
        suggestion=lr,
        rule=why,
        stopped=stopped,
        steps=trace.steps,
        seconds=seconds,
        group=group_name,
    )


def _group_ratios(groups: list[dict[str, Any]]) -> tuple[list[float], str]:
    """Each param group's rate as a multiple of the reference group's, and that group's
    name (the curve's ``group``)."""
    if not groups:
        raise ConfigError("the learning-rate range test needs an optimizer with param groups")
    ref = _reference_group(groups)
    ref_lr = float(groups[ref]["lr"])
    if not ref_lr > 0:
        raise ConfigError(
            "the learning-rate range test needs a param group with a positive learning rate "
            "(the others keep their ratio to it); every group's lr is 0"
        )
    return [float(g["lr"]) / ref_lr for g in groups], str(groups[ref].get("name", "lr"))


@dataclass
class _Trace:
    """What a sweep recorded: the rates, smoothed and raw losses, batches evaluated, and
    why it stopped early ("" when it reached the last rate)."""

    stopped: str = ""
    lrs: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    raw: list[float] = field(default_factory=list)
    steps: int = 0


def _sweep(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    mults: list[float],
    batches: Batches,
    loss_fn: LossFn,
    rates: list[float],
    smooth: float,
    diverge: float | None,
    device: torch.device,
) -> _Trace:
    """One optimizer step per rate of ``rates`` (each group at the rate times its
    ratio), the loss smoothed as fastai's ``AvgSmoothLoss``; stops when the batches run
    out, a loss is not finite or the smoothed loss diverges."""
    groups = optimizer.param_groups
    trace = _Trace()
    stream = _cycle(batches)
    try:
        avg, best = 0.0, math.inf
        for i, lr in enumerate(rates):
            batch = next(stream, None)
            if batch is None:
                trace.stopped = f"the batches ran out after {i} steps"
                break
            x, y = batch
            for g, mult in zip(groups, mults, strict=True):
                g["lr"] = lr * mult
            loss = loss_fn(model, _to(x, device), _to(y, device))
            value = float(loss.detach())
            trace.steps += 1
            if not math.isfinite(value):
                trace.stopped = f"loss not finite at lr {lr:.3g} (step {i + 1})"
                break
            avg = smooth * avg + (1.0 - smooth) * value
            s = avg / (1.0 - smooth ** (i + 1))
            trace.lrs.append(lr)
            trace.raw.append(value)
            trace.smoothed.append(s)
            best = min(best, s)
            # the first steps' average is one or two small batches: not yet a divergence
            settled = i >= max(3, len(rates) // 10)
            if diverge is not None and settled and best > 0 and s > diverge * best:
                trace.stopped = (
                    f"diverged at lr {lr:.3g}: smoothed loss {s:.4g} > {diverge:g} x best "
                    f"{best:.4g}"
                )
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        stream.close()  # a DataLoader's iterator (and its workers) ends with it
    return trace


def _check_settings(
    start_lr: float, end_lr: float, num_steps: int, smooth: float, diverge: float | None, rule: str
) -> None:
    if not (math.isfinite(start_lr) and start_lr > 0):
        raise ConfigError(f"lr range test: start_lr must be a positive number (got {start_lr})")
    if not (math.isfinite(end_lr) and end_lr > start_lr):
        raise ConfigError(
            f"lr range test: end_lr must be above start_lr (got start_lr {start_lr:g}, "
            f"end_lr {end_lr:g})"
        )
    if num_steps < 10:
        raise ConfigError(
            f"lr range test: num_steps must be at least 10 (got {num_steps}); ~100 "
            "reads a curve well"
        )
    if not 0 <= smooth < 1:
        raise ConfigError(f"lr range test: smooth must be in [0, 1) (got {smooth})")
    if diverge is not None and not diverge > 1:
        raise ConfigError(
            f"lr range test: diverge must be above 1, or None to never stop early (got {diverge})"
        )
    check_rule(rule)


def _reference_group(groups: list[dict[str, Any]]) -> int:
    """The group the swept rate is: the one named ``head`` (apply_plan's; ``--lr`` is
    its rate), else the fastest."""
    for i, g in enumerate(groups):
        if g.get("name") == "head" and float(g["lr"]) > 0:
            return i
    return max(range(len(groups)), key=lambda i: float(groups[i]["lr"]))


def _cycle(batches: Batches) -> Generator[tuple[Tensor, Tensor], None, None]:
    """The batches again and again; an empty pass ends the stream (an empty first pass
    is an error), as does a one-shot iterator's end."""
    first = True
    while True:
        fresh = not isinstance(batches, Iterable)  # a function: a new iterable each pass
        source = batches() if not isinstance(batches, Iterable) else batches
        it = iter(source)
        empty = True
        for batch in it:
            empty = False
            yield batch
        if empty:
            if first:
                raise ConfigError("the learning-rate range test got no batches")
            return
        if it is source and not fresh:  # a one-shot iterator: nothing to go through again
            return
        first = False


def _to(value: Any, device: torch.device) -> Any:
    return value.to(device, non_blocking=True) if hasattr(value, "to") else value


# --- the picture ------------------------------------------------------------------------


@styled
def plot_lr_curve(curve: LrCurve, path: Path, *, title: str | None = None) -> Path:
    """The smoothed loss against the learning rate (log axis), the batches' own losses
    faintly behind it and the suggestion as a vertical line labelled with its value and
    rule, as a PNG written whole or not at all.  Returns ``path``."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display

    path = Path(path)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    if curve.lrs:
        (line,) = ax.plot(curve.lrs, curve.losses, lw=1.8, label="smoothed")
        ax.plot(
            curve.lrs, curve.raw_losses, color=line.get_color(), alpha=0.25, lw=0.8, label="batch"
        )
        lo, hi = min(curve.losses), max(curve.losses)
        pad = 0.05 * (hi - lo) or 0.05 * abs(hi) or 0.05
        ax.set_ylim(lo - pad, hi + pad)  # the raw losses' spikes must not squash the curve
    else:
        ax.text(0.5, 0.5, "no loss recorded", ha="center", va="center", transform=ax.transAxes)
    ax.axvline(
        curve.suggestion,
        color="C1",
        ls="--",
        label=f"suggestion {curve.suggestion:.3g}: {curve.rule}",
    )
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (cross-entropy, nats)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path

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

Rules (:data:`RULES`):

- ``valley`` (default; the default of fastai's ``lr_find``, ``fastai/callback/schedule.py``):
  the longest strictly decreasing run of the smoothed loss (a longest decreasing
  subsequence), and the point about halfway along it: index ``start + int(s) +
  int(s / 2)`` with ``s = (end - start) / 3``.  It sits in the middle of the stretch
  where the loss falls steadily, and a longest run is robust to one noisy point, where
  the steepest point of a noisy curve may be a blip.
- ``steepest``: the most negative slope of the smoothed loss (Lightning's
  ``suggestion()``), taken against log10(lr) as fastai's ``steep`` does and as
  pytorch-lightning#21171 proposes for Lightning's exponential mode: the rates are
  log-spaced, and against lr itself a slope at 1e-6 would weigh a million times one at 1.
- ``minimum/10``: a tenth of the rate at the lowest loss (fastai's ``minimum``: an order
  of magnitude below where the loss bottoms out).

All three look at the curve as fastai's ``lr_find`` hands it to them: cut at the first
non-finite loss, the first tenth of the planned steps and the last five points dropped
(the start is still noise, the end already diverging).  A curve too short to read, flat,
or never falling gets :data:`FALLBACK_LR` (kept inside the rates tested) and says so in
the rule string, e.g. ``"valley (loss flat over the sweep: fallback 0.001)"``.

Param groups keep their ratios: a group whose rate is ``mult`` times the reference
group's (the ``head`` group of :func:`headstart.plan.apply.apply_plan`, else the fastest)
moves at ``mult`` times the swept rate, so the curve and the suggestion are in the
reference group's rate, as ``--lr`` is (a :class:`~headstart.plan.make.Plan`'s
``head_lr``; the backbone at ``lr * backbone_lr_mult``).
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from headstart._io import atomic_path
from headstart.errors import ConfigError

__all__ = [
    "FALLBACK_LR",
    "RULES",
    "LrCurve",
    "lr_range_test",
    "plot_lr_curve",
    "suggest",
    "suggest_explained",
]

log = logging.getLogger(__name__)

RULES = ("valley", "steepest", "minimum/10")

# The rate when the curve says nothing (headstart's --lr default before --lr auto).
FALLBACK_LR = 1e-3

# Fewer points than this (after the cuts) is no curve to read a rate from.
MIN_POINTS = 5

# The loss must fall (or, for "flat", vary) by this fraction of its size to count.
FLAT_TOLERANCE = 0.01

# fastai's lr_find drops the last five points before suggesting (already diverging).
SKIP_END = 5

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
    groups = optimizer.param_groups
    if not groups:
        raise ConfigError("the learning-rate range test needs an optimizer with param groups")
    ref = _reference_group(groups)
    ref_lr = float(groups[ref]["lr"])
    if not ref_lr > 0:
        raise ConfigError(
            "the learning-rate range test needs a param group with a positive learning rate "
            "(the others keep their ratio to it); every group's lr is 0"
        )
    mults = [float(g["lr"]) / ref_lr for g in groups]
    group_name = str(groups[ref].get("name", "lr"))
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)

    saved = _Snapshot(model, optimizer, device, generators)
    t0 = time.perf_counter()
    lrs: list[float] = []
    smoothed: list[float] = []
    raw: list[float] = []
    steps = 0
    stopped = f"reached end_lr {end_lr:g}"
    stream = _cycle(batches)
    try:
        avg, best = 0.0, math.inf
        for i in range(num_steps):
            lr = start_lr * (end_lr / start_lr) ** (i / (num_steps - 1))
            batch = next(stream, None)
            if batch is None:
                stopped = f"the batches ran out after {i} steps"
                break
            x, y = batch
            for g, mult in zip(groups, mults, strict=True):
                g["lr"] = lr * mult
            loss = loss_fn(model, _to(x, device), _to(y, device))
            value = float(loss.detach())
            steps += 1
            if not math.isfinite(value):
                stopped = f"loss not finite at lr {lr:.3g} (step {i + 1})"
                break
            avg = smooth * avg + (1.0 - smooth) * value
            s = avg / (1.0 - smooth ** (i + 1))
            lrs.append(lr)
            raw.append(value)
            smoothed.append(s)
            best = min(best, s)
            if diverge is not None and best > 0 and s > diverge * best:
                stopped = (
                    f"diverged at lr {lr:.3g}: smoothed loss {s:.4g} > {diverge:g} x best "
                    f"{best:.4g}"
                )
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        stream.close()  # a DataLoader's iterator (and its workers) ends with it
        saved.restore()
    seconds = time.perf_counter() - t0
    lr, why = suggest_explained(lrs, smoothed, rule, skip_begin=num_steps // 10)
    log.info(
        "learning-rate range test: %d steps, %s; suggestion %.3g (%s)", steps, stopped, lr, why
    )
    return LrCurve(
        lrs=tuple(lrs),
        losses=tuple(smoothed),
        raw_losses=tuple(raw),
        suggestion=lr,
        rule=why,
        stopped=stopped,
        steps=steps,
        seconds=seconds,
        group=group_name,
    )


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
    _check_rule(rule)


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ConfigError(f"unknown lr suggestion rule {rule!r}; use one of {', '.join(RULES)}")


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


class _Snapshot:
    """What a sweep changes, copied (tensors to the CPU, to spare the accelerator's
    memory) so that :meth:`restore` puts it back bit for bit."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        generators: Sequence[torch.Generator],
    ) -> None:
        self.model, self.optimizer = model, optimizer
        self.weights = {k: _cpu_tree(v, bare=True) for k, v in model.state_dict().items()}
        in_model = {id(p) for p in model.parameters()}
        params = [p for g in optimizer.param_groups for p in g["params"]]
        self.extra = [(p, _cpu(p.detach())) for p in params if id(p) not in in_model]
        seen: set[int] = set()
        self.grads: list[tuple[Tensor, Tensor | None]] = []
        for p in [*model.parameters(), *params]:
            if id(p) not in seen:
                seen.add(id(p))
                self.grads.append((p, None if p.grad is None else _cpu(p.grad)))
        self.modes = [(m, m.training) for m in model.modules()]
        self.state = {p: _cpu_tree(s) for p, s in optimizer.state.items()}
        self.hypers = [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in
                       optimizer.param_groups]  # fmt: skip
        self.python = random.getstate()
        self.numpy = np.random.get_state()
        self.torch = torch.get_rng_state()
        cuda = torch.cuda.is_available() and (device.type == "cuda" or torch.cuda.is_initialized())
        self.cuda = torch.cuda.get_rng_state_all() if cuda else None
        self.generators = [(g, g.get_state()) for g in generators]

    def restore(self) -> None:
        with torch.no_grad():
            self.model.load_state_dict(self.weights)
            for p, value in self.extra:
                p.copy_(value)
        for p, grad in self.grads:
            p.grad = None if grad is None else grad.to(p.device)
        for m, training in self.modes:
            m.training = training
        state: defaultdict[Any, Any] = defaultdict(dict)
        for p, s in self.state.items():
            state[p] = _to_device_tree(s)
        self.optimizer.state = state
        for g, hypers in zip(self.optimizer.param_groups, self.hypers, strict=True):
            params = g["params"]
            g.clear()
            g.update(copy.deepcopy(hypers), params=params)
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(self.torch)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        for generator, s in self.generators:
            generator.set_state(s)


def _cpu(t: Tensor) -> Tensor:
    return t.detach().to("cpu", copy=True)


def _cpu_tree(value: Any, *, bare: bool = False) -> Any:
    """``value`` with its tensors copied to the CPU (with their device, unless ``bare``)."""
    if isinstance(value, Tensor):
        return _cpu(value) if bare else (_cpu(value), value.device)
    if isinstance(value, dict):
        return {k: _cpu_tree(v, bare=bare) for k, v in value.items()}
    return copy.deepcopy(value)


def _to_device_tree(value: Any) -> Any:
    """The inverse of :func:`_cpu_tree`: each tensor back on its device, a fresh copy."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], torch.device):
        return value[0].to(value[1], copy=True)
    if isinstance(value, dict):
        return {k: _to_device_tree(v) for k, v in value.items()}
    return copy.deepcopy(value)


# --- the pick ---------------------------------------------------------------------------


def suggest(
    lrs: Sequence[float],
    losses: Sequence[float],
    rule: str = "valley",
    *,
    skip_begin: int | None = None,
    skip_end: int = SKIP_END,
    fallback: float = FALLBACK_LR,
) -> float:
    """The rate :func:`suggest_explained` picks (without its explanation)."""
    return suggest_explained(
        lrs, losses, rule, skip_begin=skip_begin, skip_end=skip_end, fallback=fallback
    )[0]


def suggest_explained(
    lrs: Sequence[float],
    losses: Sequence[float],
    rule: str = "valley",
    *,
    skip_begin: int | None = None,
    skip_end: int = SKIP_END,
    fallback: float = FALLBACK_LR,
) -> tuple[float, str]:
    """A learning rate read off a range test's (smoothed) curve by ``rule``, and the rule
    as it was applied: the rule's name, or the name and why ``fallback`` was used.

    As fastai's ``lr_find``: the curve is cut at its first non-finite loss (or rate),
    then its first ``skip_begin`` points (default: a tenth of them) and last ``skip_end``
    are dropped, unless that leaves fewer than :data:`MIN_POINTS`.  The result is always
    a finite rate within the rates tested (``fallback`` itself when none was).
    """
    _check_rule(rule)
    x = np.asarray(lrs, dtype=float).reshape(-1)
    y = np.asarray(losses, dtype=float).reshape(-1)
    if len(x) != len(y):
        raise ConfigError(f"lr suggestion: {len(x)} learning rates but {len(y)} losses")
    good_lr = np.isfinite(x) & (x > 0)
    bad = ~(good_lr & np.isfinite(y))
    n = int(np.argmax(bad)) if bad.any() else len(x)
    if not n:
        return fallback, f"{rule} (no finite loss recorded: fallback {fallback:g})"
    x, y = x[:n], y[:n]
    begin = n // 10 if skip_begin is None else max(0, skip_begin)
    end = max(0, skip_end)
    if n - begin - end >= MIN_POINTS:
        x, y = x[begin : n - end], y[begin : n - end]

    def fall_back(reason: str, top: float) -> tuple[float, str]:
        value = float(min(max(fallback, float(x.min())), top))
        return value, f"{rule} ({reason}: fallback {value:.3g})"

    if np.any(np.diff(x) <= 0):
        raise ConfigError("lr suggestion: the learning rates must increase along the curve")
    if len(x) < MIN_POINTS:
        return fall_back(f"curve too short: {len(x)} points", float(x.max()))
    scale = max(abs(float(y[0])), 1e-12)
    if y[0] - y.min() < FLAT_TOLERANCE * scale:
        if y.max() - y.min() < FLAT_TOLERANCE * scale:
            return fall_back("loss flat over the sweep", float(x.max()))
        # It only rose: no rate above the lowest loss's is safe.
        return fall_back("loss never fell", float(x[int(np.argmin(y))]))
    if rule == "valley":
        idx = _valley(y)
        value = float(x[idx])
    elif rule == "steepest":
        value = float(x[int(np.argmin(np.gradient(y, np.log10(x))))])
    else:  # minimum/10
        lowest = float(x[int(np.argmin(y))])
        value = lowest / 10
        if value < x.min():
            return float(x.min()), f"{rule} (a tenth of {lowest:.3g} is below the rates tested)"
    return value, rule


def _valley(losses: np.ndarray) -> int:
    """fastai's ``valley``: the longest strictly decreasing subsequence of the curve (its
    length ``lds[i]`` ending at each point, the first longest kept) and the point
    ``int(s) + int(s / 2)`` after its start, ``s`` a third of its span.  The start is
    fastai's ``end - length`` (one before a contiguous run's first point), kept at 0
    or above; fastai lets it reach -1, the last and highest rate, on a flat curve."""
    n = len(losses)
    lds = np.ones(n, dtype=np.int64)
    for i in range(1, n):
        higher = losses[:i] > losses[i]
        if higher.any():
            lds[i] = int(lds[:i][higher].max()) + 1
    end = int(np.argmax(lds))
    start = max(0, end - int(lds[end]))
    sections = (end - start) / 3
    return start + int(sections) + int(sections / 2)


# --- the picture ------------------------------------------------------------------------


def plot_lr_curve(curve: LrCurve, path: Path, *, title: str | None = None) -> Path:
    """The smoothed loss against the learning rate (log axis), the batches' own losses
    faintly behind it and the suggestion as a vertical line labelled with its value and
    rule, as a PNG written whole or not at all.  Returns ``path``."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display

    path = Path(path)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    if curve.lrs:
        ax.plot(curve.lrs, curve.raw_losses, color="tab:blue", alpha=0.25, lw=0.8, label="batch")
        ax.plot(curve.lrs, curve.losses, color="tab:blue", lw=1.8, label="smoothed")
        lo, hi = min(curve.losses), max(curve.losses)
        pad = 0.05 * (hi - lo) or 0.05 * abs(hi) or 0.05
        ax.set_ylim(lo - pad, hi + pad)  # the raw losses' spikes must not squash the curve
    else:
        ax.text(0.5, 0.5, "no loss recorded", ha="center", va="center", transform=ax.transAxes)
    ax.axvline(
        curve.suggestion,
        color="tab:red",
        ls="--",
        label=f"suggestion {curve.suggestion:.3g}: {curve.rule}",
    )
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path

"""``partial:K``: the backbone cut after its frozen prefix, so the prefix can be cached.

A backbone's ``body`` is an arbitrary module and its stages are only an assignment of
parameters, so where the frozen prefix ends in the forward pass is found by watching one
probe forward pass (:func:`find_split`): every submodule call is recorded in order, and
the cut goes after the last module call that ends before the first module with a
trainable parameter starts (the latest such point: pooling right after the last frozen
stage makes the kept feature map smaller).  A cut is only used once it is checked on the
probe:

- ``rest(prefix(x))`` equals ``body(x)`` (so nothing else crosses the cut);
- the prefix run as training runs it (frozen stages in eval mode, everything else in
  training mode) gives the same output and draws no random numbers (so a dropout before
  the cut cannot make the cached path differ from the per-epoch loop).

Otherwise an earlier cut is tried, and if none passes the fit runs the frozen stages
every epoch (with the reason recorded).

:meth:`Split.rest` runs the body with every module of the prefix replaced for that call
by one returning a stand-in (the cached tensor at the cut, zeros elsewhere): the
trainable stages then run exactly the code they run in the whole model, in whatever
mode the model is in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from headstart.plan.apply import set_train_mode
from headstart.plan.make import Plan
from headstart.sources.target import TargetModel

PROBE_BATCH = 2


class _Stop(Exception):
    def __init__(self, output: torch.Tensor) -> None:
        super().__init__("prefix done")
        self.output = output


@dataclass
class _Call:
    name: str
    module: nn.Module
    start: int
    end: int = -1
    shape: tuple[int, ...] | None = None  # of a tensor output
    dtype: torch.dtype | None = None


@dataclass
class Split:
    """``body`` cut after the call of ``boundary`` (a submodule name)."""

    body: nn.Module
    boundary: str
    stubs: list[_Call]  # the outermost prefix calls; the last one is the boundary
    input_shape: tuple[int, ...]  # one image
    item_shape: tuple[int, ...]  # the boundary's output for one image
    frozen_stages: tuple[str, ...] = field(default=())

    def describe(self) -> dict[str, Any]:
        return {
            "frozen_stages": list(self.frozen_stages),
            "cut_after": self.boundary,
            "item_shape": list(self.item_shape),
        }

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        """The boundary module's output for ``x`` (the body runs up to it, then stops)."""
        module = self.stubs[-1].module

        def stop(_m: nn.Module, _args: Any, output: Any) -> None:
            raise _Stop(output)

        handle = module.register_forward_hook(stop)
        try:
            self.body(x)
        except _Stop as done:
            return done.output
        finally:
            handle.remove()
        raise RuntimeError(f"the backbone never called {self.boundary}")  # checked on the probe

    @contextlib.contextmanager
    def _injected(self, t: torch.Tensor) -> Iterator[None]:
        batch = t.shape[0]
        patched: list[nn.Module] = []
        try:
            for call in self.stubs:
                if call is self.stubs[-1]:
                    out = t
                else:
                    assert call.shape is not None
                    # what it returns is never used (checked on the probe): no memory
                    out = torch.zeros((), dtype=call.dtype, device=t.device).expand(
                        batch, *call.shape[1:]
                    )
                call.module.forward = _returning(out)
                patched.append(call.module)
            yield
        finally:
            for module in patched:
                del module.forward

    def rest(self, t: torch.Tensor) -> torch.Tensor:
        """``body``'s output when the prefix's output is ``t``."""
        x = torch.zeros((), dtype=t.dtype, device=t.device).expand(t.shape[0], *self.input_shape)
        with self._injected(t):
            out: torch.Tensor = self.body(x)
        return out


def _returning(value: torch.Tensor) -> Any:
    def forward(*_args: Any, **_kwargs: Any) -> torch.Tensor:
        return value

    return forward


class PrefixModel(nn.Module):
    """``head(dropout(rest(prefix_output)))``: a :class:`TargetModel` fed the output of
    its frozen prefix.  It registers the target model's own backbone, dropout and head,
    so its state dict is the target model's (checkpoints, best-epoch copies and
    ``--resume`` see the same keys as the per-epoch loop) and training trains them."""

    split: Split

    def __init__(self, model: TargetModel, split: Split) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.dropout = model.dropout
        self.head = model.head
        object.__setattr__(self, "split", split)  # holds the body: not a second submodule

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def forward(self, prefix_output: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.dropout(self.split.rest(prefix_output)))
        return out


def _direct_stages(backbone: Any, name: str, module: nn.Module) -> set[int]:
    prefix = f"{name}." if name else ""
    own = [n for n, _ in module.named_parameters(recurse=False)]
    own += [n for n, _ in module.named_buffers(recurse=False)]
    return {backbone.stage_of(prefix + n) for n in own}


def _record(body: nn.Module, x: torch.Tensor) -> list[_Call]:
    calls: list[_Call] = []
    open_: dict[int, list[_Call]] = {}
    clock = [0]
    handles = []

    def pre(name: str) -> Any:
        def hook(module: nn.Module, _args: Any) -> None:
            call = _Call(name, module, clock[0])
            clock[0] += 1
            calls.append(call)
            open_.setdefault(id(module), []).append(call)

        return hook

    def post(module: nn.Module, _args: Any, output: Any) -> None:
        call = open_[id(module)].pop()
        call.end = clock[0]
        clock[0] += 1
        if isinstance(output, torch.Tensor):
            call.shape, call.dtype = tuple(output.shape), output.dtype

    for name, module in body.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(pre(name)))
            handles.append(module.register_forward_hook(post))
    try:
        body(x)
    finally:
        for h in handles:
            h.remove()
    return calls


def _outermost(calls: list[_Call], end: int) -> list[_Call]:
    out: list[_Call] = []
    for call in sorted((c for c in calls if c.end <= end), key=lambda c: c.start):
        if not out or call.start > out[-1].end:
            out.append(call)
    return out


def find_split(model: TargetModel, plan: Plan, input_shape: tuple[int, ...]) -> Split | str:
    """Where to cut ``model``'s backbone after the plan's frozen stages, or why not.

    Runs the backbone (on the CPU, as it is when training starts) on a random probe
    batch a few times; the global random state, the modules' modes and their state
    (BatchNorm statistics) are left as they were.
    """
    backbone: Any = model.backbone
    body: nn.Module = backbone.body
    names = list(backbone.stage_names)
    frozen = {names.index(s) for s in plan.frozen_stages}
    modes = {m: m.training for m in model.modules()}
    probe = torch.randn((PROBE_BATCH, *input_shape), generator=torch.Generator().manual_seed(0))
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            body.eval()
            calls = _record(body, probe)
            expected = body(probe)
            return _search(model, plan, body, calls, frozen, probe, expected, input_shape)
    finally:
        for m, training in modes.items():
            m.training = training


def _search(
    model: TargetModel,
    plan: Plan,
    body: nn.Module,
    calls: list[_Call],
    frozen: set[int],
    probe: torch.Tensor,
    expected: torch.Tensor,
    input_shape: tuple[int, ...],
) -> Split | str:
    backbone: Any = model.backbone
    stages = {id(c): _direct_stages(backbone, c.name, c.module) for c in calls}
    trainable_starts = [c.start for c in calls if stages[id(c)] - frozen]
    frozen_ends = [c.end for c in calls if stages[id(c)] & frozen]
    if not trainable_starts or not frozen_ends:
        return "the backbone's forward pass does not run its stages as separate modules"
    first_trainable, last_frozen = min(trainable_starts), max(frozen_ends)
    times_called: dict[int, int] = {}
    for c in calls:
        times_called[id(c.module)] = times_called.get(id(c.module), 0) + 1
    candidates = sorted(
        (c for c in calls if last_frozen <= c.end < first_trainable),
        key=lambda c: -c.end,
    )
    for cut in candidates:
        if cut.shape is None or cut.shape[0] != PROBE_BATCH:
            continue
        stubs = _outermost(calls, cut.end)
        if stubs[-1] is not cut or any(
            c.shape is None or c.shape[0] != PROBE_BATCH or times_called[id(c.module)] != 1
            for c in stubs
        ):
            continue
        split = Split(
            body=body,
            boundary=cut.name,
            stubs=stubs,
            input_shape=tuple(input_shape),
            item_shape=tuple(cut.shape[1:]),
            frozen_stages=plan.frozen_stages,
        )
        body.eval()
        try:
            out = split.prefix(probe)
            rest = split.rest(out)
        except Exception:  # a cut this model's code does not survive: try an earlier one
            continue
        if rest.shape != expected.shape or not torch.allclose(rest, expected, rtol=1e-4, atol=1e-5):
            continue
        # as training runs it: frozen stages in eval mode, the rest in training mode
        set_train_mode(model, plan, True)
        state = torch.get_rng_state()
        trained = split.prefix(probe)
        same_rng = torch.equal(state, torch.get_rng_state())
        if same_rng and torch.equal(trained, out):
            return split
    return (
        f"no point in the backbone's forward pass after its frozen stages "
        f"({', '.join(plan.frozen_stages)}) where their output alone carries on"
    )

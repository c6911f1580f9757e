"""What a learning-rate range test changes, saved and put back bit for bit.

:class:`Snapshot` copies a model's parameters and buffers, their gradients and train/eval
modes, an optimizer's state and hyper-parameters, and the random generators (Python's,
NumPy's, torch's CPU and CUDA ones, and any given) before
:func:`headstart.train.lr_find.lr_range_test` sweeps, and :meth:`Snapshot.restore` puts
them back afterwards, so the training that follows runs as if there had been no test.
"""

from __future__ import annotations

import copy
import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["Snapshot"]


class Snapshot:
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

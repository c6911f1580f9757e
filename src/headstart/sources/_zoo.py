"""What the zoo adapters (``timm``, ``torchvision``) share: loading a weights file into a
body whose old output layer is gone, and keeping that old layer as the file has it."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from headstart.sources.base import WeightsOrigin
from headstart.weights.download import file_sha256
from headstart.weights.files import load_into, load_state_dict

__all__ = ["StateFix", "detached_head", "load_weights_file"]

log = logging.getLogger(__name__)

StateFix = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def detached_head(head: nn.Module | None) -> nn.Module | None:
    """A copy of the old output layer to keep as ``Source.old_head`` (None if stateless)."""
    if head is None or not any(True for _ in head.parameters()):
        return None
    return copy.deepcopy(head)


def _head_as_in_file(
    head: nn.Module | None, head_state: Mapping[str, torch.Tensor], prefix: str
) -> nn.Module | None:
    """The old output layer with the file's tensors, resized when the file's has other
    shapes (a checkpoint fine-tuned on 10 classes has a 10-way head)."""
    own = {k[len(prefix) + 1 :]: v for k, v in head_state.items() if k.startswith(prefix + ".")}
    if not own:
        return head
    weight = own.get("weight")
    if (head is None or isinstance(head, nn.Linear)) and weight is not None and weight.ndim == 2:
        new = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in own)
        new.load_state_dict({k: v for k, v in own.items() if k in ("weight", "bias")})
        return new
    if head is None:
        return None
    try:
        head.load_state_dict(own)
    except RuntimeError as exc:
        # Only the removed layer is affected, which the target model never uses.
        log.warning("old output layer %s kept with random weights: %s", prefix, exc)
    return head


def load_weights_file(
    body: nn.Module,
    path: Path,
    *,
    spec: str,
    description: str,
    head_prefixes: Sequence[str],
    old_head: nn.Module | None,
    strict: bool,
    fix: StateFix | None = None,
    source_classes: tuple[str, ...] | None = None,
) -> tuple[WeightsOrigin, nn.Module | None]:
    """Load ``path`` into ``body`` and return the weights origin and the old output layer.

    ``fix`` adapts the file's keys or shapes to the architecture first (renamed keys in
    old checkpoints, a position embedding for another image size).  The file's tensors
    under the first of ``head_prefixes`` it has become the returned old head.  Raises
    :class:`~headstart.errors.WeightsError` for a file that does not fit.
    """
    state = load_state_dict(path)
    if fix is not None:
        state = fix(state)
    report = load_into(body, state, head_prefixes=head_prefixes, strict=strict, where=str(path))
    # The old head is whichever of the prefixes the file actually has.
    present = [p for p in head_prefixes if any(k.startswith(p + ".") for k in report.head_state)]
    if present:
        old_head = _head_as_in_file(old_head, report.head_state, present[0])
    origin = WeightsOrigin(
        spec=spec,
        description=description,
        pretrained=True,
        path=str(path),
        sha256=file_sha256(path),
        source_classes=source_classes,
        dropped_keys=tuple(report.dropped),
        missing_keys=tuple(report.missing),
        unexpected_keys=tuple(report.unexpected),
    )
    return origin, old_head

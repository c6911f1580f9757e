"""Reading weights files safely (safetensors, or pickles with ``weights_only=True``),
unwrapping their containers, and loading them into a model with a report of the keys.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from headstart.errors import WeightsError

log = logging.getLogger(__name__)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The string metadata in a safetensors header (empty for other formats)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from exc


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a state dict without running pickled code.

    Raises :class:`WeightsError` naming the file if it is truncated, not a weights file,
    or a pickle that would execute code.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: weights file is empty (an interrupted download?)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise WeightsError(
                f"{path}: damaged or truncated safetensors file ({exc}); delete it and "
                "fetch it again"
            ) from exc
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"{path}: refused to load: the file holds pickled objects that could run code "
            f"({str(exc).splitlines()[0][:200]}); if you trust it, convert it: headstart "
            f"cache convert {path}"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise WeightsError(
            f"{path}: not a readable weights file, or truncated ({str(exc)[:200]})"
        ) from exc
    return unwrap_state_dict(obj, where=str(path))


def unwrap_state_dict(obj: object, *, where: str = "weights") -> dict[str, torch.Tensor]:
    """Unwrap ``{"state_dict": ...}`` / ``{"model": ...}`` and strip ``module.`` prefixes."""
    for _ in range(3):
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            for key in ("state_dict", "model", "model_state_dict", "module"):
                if key in obj and isinstance(obj[key], Mapping):
                    obj = obj[key]
                    break
            else:
                break
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{where}: expected a state dict, found {type(obj).__name__}")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(f"{where}: holds no tensors")
    # DataParallel / DistributedDataParallel save every key under "module.".
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


@dataclass
class KeyReport:
    """What happened to each key when a state dict was loaded into a backbone."""

    loaded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # the old output layer
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model
    mismatched: list[str] = field(default_factory=list)  # "name: file (a, b) vs model (c, d)"
    head_state: dict[str, torch.Tensor] = field(default_factory=dict)

    def summary(self) -> str:
        parts = [f"{len(self.loaded)} tensors loaded"]
        if self.dropped:
            parts.append(f"old output layer dropped ({', '.join(self.dropped)})")
        for label, keys in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("shape-mismatched", self.mismatched),
        ):
            if keys:
                shown = ", ".join(keys[:10]) + (
                    f", ... ({len(keys)} in all)" if len(keys) > 10 else ""
                )
                parts.append(f"{label}: {shown}")
        return "; ".join(parts)


def load_into(
    body: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    head_prefixes: Sequence[str] = (),
    strict: bool = False,
    where: str = "weights",
) -> KeyReport:
    """Load ``state_dict`` into ``body`` (a model whose old output layer is gone).

    Keys under ``head_prefixes`` belong to the old output layer: they are dropped (kept in
    ``head_state``).  Errors, naming the keys: a file that matches nothing, a shape
    mismatch, and a learned tensor of ``body`` the file lacks (it would stay random in a
    model reported as pretrained).  Keys of the file that ``body`` lacks are logged as a
    warning.  With ``strict`` any missing or unexpected key is an error.
    """

    def is_head(key: str) -> bool:
        return any(key == p or key.startswith(p + ".") for p in head_prefixes if p)

    own = body.state_dict()
    report = KeyReport()
    to_load: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if is_head(key) and key not in own:
            report.dropped.append(key)
            report.head_state[key] = value
        elif key not in own:
            report.unexpected.append(key)
        elif tuple(own[key].shape) != tuple(value.shape):
            report.mismatched.append(
                f"{key}: file {tuple(value.shape)} vs model {tuple(own[key].shape)}"
            )
        else:
            to_load[key] = value
    report.loaded = sorted(to_load)
    report.missing = [k for k in own if k not in to_load and not k.endswith("num_batches_tracked")]
    if not to_load:
        raise WeightsError(
            f"{where}: none of its {len(state_dict)} tensors fit this architecture "
            f"(first keys: {', '.join(list(state_dict)[:5])}); is it for another model?"
        )
    if report.mismatched:
        raise WeightsError(f"{where}: does not fit this architecture: {report.summary()}")
    if strict and (report.missing or report.unexpected):
        raise WeightsError(f"{where}: keys do not match (strict): {report.summary()}")
    # Parameters and BatchNorm statistics are learned; other buffers (position indices,
    # masks) are computed by the model itself, so a file may leave them out.
    params = {n for n, _ in body.named_parameters(remove_duplicate=False)}
    learned = [
        k for k in report.missing if k in params or k.endswith(("running_mean", "running_var"))
    ]
    if learned:
        shown = ", ".join(learned[:10]) + (
            f", ... ({len(learned)} in all)" if len(learned) > 10 else ""
        )
        raise WeightsError(
            f"{where}: missing from the file: {shown}; those layers would stay random in a "
            "model called pretrained; use weights made for this architecture, or --weights "
            "none to train from random weights"
        )
    if report.missing or report.unexpected:
        log.warning("%s: %s", where, report.summary())
    loadable = OrderedDict(to_load)
    # Module versions (``_metadata``) are lost by unwrapping and by safetensors, and some
    # modules refuse to load without one (torchvision's MNASNet): use the model's own.
    loadable._metadata = getattr(own, "_metadata", None)  # type: ignore[attr-defined]
    body.load_state_dict(loadable, strict=False)
    return report

"""Features: a source's backbone run once over a data set, as plain arrays.

:func:`extract_features` is the one place that turns ``(Source, LabeledData)`` into a
``[N, D]`` feature matrix (and, on request, the source classifier's softmax outputs),
for images and for texts alike: the source's inputs (:mod:`headstart.sources.inputs`)
build the loader, and rows a text loader batched by length are put back in item order.
Ranking, recommending, embedding and the feature cache all start from its
:class:`Features`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from headstart._progress import bar
from headstart.data.labelled import LabeledData
from headstart.errors import ConfigError
from headstart.runtime import loader_workers, resolve_device
from headstart.sources.base import Source

log = logging.getLogger(__name__)


@dataclass(eq=False)  # eq would compare numpy arrays elementwise
class Features:
    """What a backbone sees in a data set.

    ``features`` is ``[N, D]`` float32, ``targets`` is ``[N]`` int64 (as in the data,
    so -1 marks an unlabelled item) and ``source_probs``, when asked for and the source
    kept its old classifier head, is ``[N, C_src]`` float64 whose rows sum to 1.
    """

    features: np.ndarray
    targets: np.ndarray
    source_probs: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.targets)
        if self.features.ndim != 2 or len(self.features) != n:
            raise ConfigError(
                f"features of shape {self.features.shape} do not match {n} targets; expected [N, D]"
            )
        if self.source_probs is not None and (
            self.source_probs.ndim != 2 or len(self.source_probs) != n
        ):
            raise ConfigError(
                f"source probabilities of shape {self.source_probs.shape} do not match "
                f"{n} targets; expected [N, C_src]"
            )

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])


def extract_features(
    source: Source,
    data: LabeledData,
    *,
    batch_size: int = 128,
    device: str = "cpu",
    with_source_logits: bool = False,
    workers: int | None = 0,
    progress: bool = True,
    max_length: int | None = None,
) -> Features:
    """Run ``source``'s backbone once over ``data`` and return the features.

    Images get the source's evaluation preprocessing (no augmentation); texts (a text
    source and texts, :func:`feature_loader`) are cut to ``max_length`` tokens
    (default ``min(128, what the model takes)``) and batched by length, and the features
    come back in the items' order all the same.  The backbone
    (and the old head) run in eval mode without gradients, on ``device``, and are put
    back on their device and in their mode afterwards.  With ``with_source_logits`` and
    a source that kept its old classifier head, ``source_probs`` holds the softmax of
    that head on the features; otherwise it is None.  ``progress`` shows a bar on
    stderr.  Raises :class:`ConfigError` for a batch size below 1 or an unusable
    ``device``, and :class:`DataError` for an image that cannot be read or for texts
    given to an image source (or images to a text source).
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1 (got {batch_size})")
    dev = resolve_device(device)
    loader, order = feature_loader(
        source, data, max_length=max_length, batch_size=batch_size,
        workers=loader_workers(workers, dev, kind=source.inputs.kind),
    )  # fmt: skip
    head = source.old_head if with_source_logits else None
    modules = [m for m in (source.backbone, head) if m is not None]
    restore = [(m, m.training, _device_of(m)) for m in modules]
    feats: list[torch.Tensor] = []
    probs: list[torch.Tensor] = []
    try:
        for m in modules:
            m.to(dev).eval()
        with torch.no_grad():
            for x, _ in bar(loader, desc=f"features {source.spec}", enabled=progress):
                f = source.backbone(x.to(dev)).float()
                feats.append(f.cpu())
                if head is not None:
                    # softmax in float64, so each row sums to 1 to within rounding
                    probs.append(torch.softmax(head(f).double(), dim=1).cpu())
            if not feats:  # an empty data set: keep the shapes right
                f = torch.zeros(0, source.feature_dim, device=dev)
                feats.append(f.cpu())
                if head is not None:
                    probs.append(torch.softmax(head(f).double(), dim=1).cpu())
    finally:
        for m, training, was_on in restore:
            m.train(training)
            if was_on is not None and was_on != dev:
                m.to(was_on)
    features = in_item_order(torch.cat(feats).numpy(), order)
    log.debug("features of %s: %s", source.spec, features.shape)
    return Features(
        features=features.astype(np.float32, copy=False),
        targets=np.asarray(data.targets, dtype=np.int64).copy(),
        source_probs=in_item_order(torch.cat(probs).numpy(), order) if head is not None else None,
    )


def feature_loader(
    source: Source,
    data: LabeledData,
    *,
    max_length: int | None = None,
    batch_size: int = 128,
    workers: int = 0,
) -> tuple[DataLoader[Any], np.ndarray | None]:
    """An evaluation loader of ``data`` as ``source``'s backbone takes it (images: its
    evaluation preprocessing; texts: longest first, each cut to ``max_length`` tokens,
    default ``min(128, what the model takes)``), and the item index of each row it
    yields (None: in item order): rows computed from the loader, in its order, go back to
    the items' order with :func:`in_item_order`.  Raises :class:`DataError` for data of
    the other kind."""
    inputs = source.inputs.with_length(max_length)
    inputs.check(data, where=data.spec, model=source.spec)
    return inputs.eval_loader(data, batch_size=batch_size, workers=workers, decode_once=False)


def in_item_order(rows: np.ndarray, order: np.ndarray | None) -> np.ndarray:
    """``rows`` computed in a loader's order (``order[k]`` is row k's item) in the items'
    order; ``order`` None: already in it."""
    if order is None:
        return rows
    out = np.empty_like(rows)
    out[order] = rows
    return out


def _device_of(module: torch.nn.Module) -> torch.device | None:
    first = next(module.parameters(), None)
    return None if first is None else first.device

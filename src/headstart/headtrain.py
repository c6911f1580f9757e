"""Training a head on cached features: the usual loop, minus the frozen backbone.

When the plan freezes the whole backbone (``linear``), :func:`prepare` turns the image
loaders into loaders of the backbone's features (from :mod:`headstart.featcache`) and
returns a :class:`CachedHead`, which is the target model's own dropout and head over
those features.  :func:`headstart.train.train` then runs unchanged: same optimizer groups
(the frozen backbone is still there for the plan, it is just not called), same schedule,
same batches in the same order (:class:`headstart.determinism.EpochBatchSampler`), same dropout
masks (feature extraction leaves the global random state alone), same label smoothing
and best-epoch selection.  With ``--augment none`` and ``--workers 0`` the head comes
out the same as the one the per-epoch loop trains, up to float rounding of the
backbone's outputs at another batch size.

With augmentation on, ``--feature-cache-views K`` chooses what the head sees:

- ``K = 0`` (default): the un-augmented images' features (the augmentation is not
  applied; the log and ``headstart.json`` say so);
- ``K >= 1``: K augmented views of each training image are cached, epoch ``e`` uses view
  ``(e - 1) mod K``; the cost is K forward passes instead of one per epoch.

``--no-feature-cache`` runs the backbone every epoch, as before.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from headstart.data import LabeledData
from headstart.determinism import EpochBatchSampler
from headstart.errors import ConfigError
from headstart.featcache import EVAL_VIEW, View, cached_features, state_digest
from headstart.model import TargetModel
from headstart.plan import Plan
from headstart.sources.base import Source

__all__ = ["CachedHead", "FeatureLoaders", "applies", "one_thread", "prepare"]

log = logging.getLogger(__name__)

# Evaluation batch size; the same as headstart.api.EVAL_BATCH.
EVAL_BATCH = 128


class CachedHead(nn.Module):
    """``head(dropout(features))``: a :class:`TargetModel` fed its backbone's outputs.

    It shares the target model's dropout and head (training it trains them).  The frozen
    backbone is reachable as ``.backbone`` for the plan, but is not a registered
    submodule: the state dict holds only what trains (``head.weight``, ``head.bias``, the
    same keys as in the target model), so the loop's best-epoch copies do not copy the
    whole backbone each time, and ``to(device)`` does not move it.
    """

    backbone: nn.Module

    def __init__(self, model: TargetModel) -> None:
        super().__init__()
        object.__setattr__(self, "backbone", model.backbone)  # not a submodule: see above
        self.dropout = model.dropout
        self.head = model.head

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.dropout(features))
        return out


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Training a linear head on features is many tiny matrix products: threads only
    add synchronisation (several times slower on a busy machine), so use one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _CachedViews(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Cached features indexed by :class:`EpochBatchSampler`'s ``(index, seed)`` pairs.

    The epoch the sampler is on picks the view (epoch ``e`` uses view ``(e - 1) mod K``),
    so a resumed run sees the same view as an uninterrupted one; the per-sample seed has
    nothing left to drive (the augmentation is in the cached view).
    """

    def __init__(
        self, views: list[torch.Tensor], targets: torch.Tensor, sampler: EpochBatchSampler
    ) -> None:
        self.views, self.targets, self.sampler = views, targets, sampler

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, _seed = key
        view = self.views[(self.sampler.epoch - 1) % len(self.views)]
        return view[index], self.targets[index]


@dataclass
class FeatureLoaders:
    train_loader: DataLoader[Any]
    val_loader: DataLoader[Any] | None
    model: CachedHead
    info: dict[str, Any] = field(default_factory=dict)


def applies(options: Any, plan: Plan) -> tuple[bool, str]:
    """Whether the head can train on cached features, and why not when it cannot."""
    if not getattr(options, "feature_cache", True):
        return False, "turned off (--no-feature-cache)"
    if plan.trainable_stages or plan.reinitialise:
        return False, f"strategy {plan.strategy} trains the backbone"
    if options.feature_cache_views < 0:
        raise ConfigError(f"--feature-cache-views must be >= 0 (got {options.feature_cache_views})")
    return True, ""


def prepare(
    options: Any,
    source: Source,
    plan: Plan,
    model: TargetModel,
    train_data: LabeledData,
    val_data: LabeledData | None,
    *,
    generator: torch.Generator,
    device: torch.device,
) -> FeatureLoaders:
    """Features for the training and validation data, and loaders over them."""
    t0 = time.perf_counter()
    augment = options.augment != "none"
    views = options.feature_cache_views if augment else 0
    weights = state_digest(source.backbone)
    extracted = 0
    hits: list[bool] = []

    def counted(n: int) -> None:
        nonlocal extracted
        extracted += n

    def features(data: LabeledData, view: View) -> np.ndarray:
        feats, hit = cached_features(
            source,
            data,
            view,
            device=device,
            cache=options.cache_dir,
            batch_size=max(options.batch_size, EVAL_BATCH),
            workers=options.workers,
            progress=options.progress,
            weights_digest=weights,
            on_extract=counted,
        )
        hits.append(hit)
        return feats

    n_train = len(train_data)
    has_val = val_data is not None and len(val_data) > 0
    if views == 0:
        # One entry for training and validation images together: it then also serves
        # every other split of the same data (cross-validation folds, other seeds).
        both = _concat(train_data, val_data) if has_val and val_data is not None else train_data
        feats = features(both, EVAL_VIEW)
        train_views = [feats[:n_train]]
        val_feats = feats[n_train:] if has_val else None
    else:
        train_views = [
            features(
                train_data,
                View(
                    augment=options.augment,
                    index=k,
                    seed=options.seed,
                    allow_hflip=train_data.allow_hflip,
                ),
            )
            for k in range(views)
        ]
        val_feats = features(val_data, EVAL_VIEW) if has_val and val_data is not None else None
    if augment and views == 0:
        log.info(
            "feature cache: the head trains on features of un-augmented images (--augment "
            "%s is not applied); --feature-cache-views K caches K augmented views, "
            "--no-feature-cache runs the backbone every epoch",
            options.augment,
        )

    targets = torch.as_tensor(train_data.targets, dtype=torch.int64)
    # As headstart.api._loader: the same batches in the same order (a function of the
    # seed and the epoch), and no last batch of one example (BatchNorm cannot train on it).
    n, bs = n_train, options.batch_size
    sampler = EpochBatchSampler(n, bs, seed=options.seed, drop_last=n > bs and 0 < n % bs < 2)
    train_loader: DataLoader[Any] = DataLoader(
        _CachedViews([torch.from_numpy(v) for v in train_views], targets, sampler),
        batch_sampler=sampler,
        # As the image loader: each pass draws its base seed from this generator, not from
        # torch's global one, whose stream the dropout masks come from.
        generator=generator,
    )
    val_loader = None
    if val_feats is not None and val_data is not None:
        val_loader = DataLoader(
            TensorDataset(
                torch.from_numpy(val_feats), torch.as_tensor(val_data.targets, dtype=torch.int64)
            ),
            batch_size=max(options.batch_size, EVAL_BATCH),
            generator=torch.Generator(),  # not torch's global one (dropout's stream)
        )
    info = {
        "used": True,
        "hit": all(hits),
        "images_extracted": extracted,
        "views": views,
        "augmentation_applied": views > 0,
        "seconds": time.perf_counter() - t0,
    }
    log.info(
        "feature cache: %s (%d images run through the backbone, %.1fs)",
        "hit" if info["hit"] else "filled",
        extracted,
        info["seconds"],
    )
    return FeatureLoaders(train_loader, val_loader, CachedHead(model), info)


def _concat(a: LabeledData, b: LabeledData) -> LabeledData:
    if list(a.classes) != list(b.classes):
        raise ConfigError("training and validation data have different classes")
    return replace(
        a,
        items=list(a.items) + list(b.items),
        targets=np.concatenate([a.targets, b.targets]),
        note="training and validation",
    )

"""Training a head on cached features: the usual loop, minus the frozen backbone.

When the plan freezes the whole backbone (``linear``), :func:`prepare` turns the image
loaders into loaders of the backbone's features (from :mod:`headstart.features.cache`) and
returns a :class:`CachedHead`, which is the target model's own dropout and head over
those features.  :func:`headstart.train.loop.train` then runs unchanged: same optimizer groups
(the frozen backbone is still there for the plan, it is just not called), same schedule,
same batches in the same order (:class:`headstart.data.sampling.EpochBatchSampler`), same dropout
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

``partial:K`` works the same way one step earlier: the output of the frozen prefix (the
first K stages, cut where :func:`headstart.train.prefix.find_split` finds they end) is cached,
and each epoch runs only the trainable stages and the head on it
(:class:`headstart.train.prefix.PrefixModel`, whose state dict is the whole target model's).
Prefix feature maps are large: their size is estimated before anything is computed, and
when it would pass the cache's cap (``$HEADSTART_FEATURE_CACHE_GB``) or a quarter of
the machine's memory the fit runs the frozen stages every epoch instead, saying why.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from headstart.data.labelled import LabeledData
from headstart.data.sampling import EpochBatchSampler
from headstart.errors import ConfigError
from headstart.features.cache import (
    ENV_MAX_GB,
    EVAL_VIEW,
    View,
    cached_features,
    item_digests,
    max_bytes,
    state_digest,
)
from headstart.plan.make import Plan
from headstart.runtime import loader_workers
from headstart.sources.base import Source
from headstart.sources.target import TargetModel
from headstart.train.loop import EVAL_BATCH
from headstart.train.prefix import PrefixModel, Split, find_split

log = logging.getLogger(__name__)


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
    """Loaders of cached features and the model that trains on them; ``model`` is None
    when the cache cannot be used after all (``info`` says why)."""

    train_loader: DataLoader[Any] | None
    val_loader: DataLoader[Any] | None
    model: CachedHead | PrefixModel | None
    info: dict[str, Any] = field(default_factory=dict)


def applies(options: Any, plan: Plan) -> tuple[bool, str]:
    """Whether the head (``linear``) or the trainable stages and the head (``partial:K``)
    can train on cached features, and why not when they cannot."""
    if not getattr(options, "feature_cache", True):
        return False, "turned off (--no-feature-cache)"
    if plan.lora is not None:
        return False, "strategy lora trains adapters inside the backbone"
    if plan.reinitialise or not plan.frozen_stages:
        return False, f"strategy {plan.strategy} trains the whole backbone"
    if plan.trainable_stages and options.augment != "none" and not options.feature_cache_views:
        # linear keeps its documented un-augmented cache; partial:K trains on augmented
        # images unless asked otherwise, and the cache may not change that
        return False, (
            f"--augment {options.augment}: the stages after the frozen prefix train on "
            "augmented images; --feature-cache-views K caches K augmented views of the "
            "prefix's output, --augment none caches it once"
        )
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
    """Features for the training and validation data, and loaders over them.

    For ``partial:K`` the backbone is first cut after its frozen prefix; when it cannot
    be, or the prefix's outputs would be too large, the result has no model and its
    ``info`` records why (the caller then runs the per-epoch loop).
    """
    t0 = time.perf_counter()
    augment = options.augment != "none"
    views = options.feature_cache_views if augment else 0
    split: Split | None = None
    if plan.trainable_stages:
        found = find_split(model, plan, tuple(source.preprocessing.input_size))
        if isinstance(found, str):
            return _fallback(found)
        split = found
        too_big = _too_big(split, train_data, val_data, views)
        if too_big:
            return _fallback(too_big)
    extract = _Extractor(options, source, split, device)
    train_views, val_feats = _extract(options, extract, train_data, val_data, views)
    if augment and views == 0:
        log.info(
            "feature cache: training sees the cached outputs of un-augmented images "
            "(--augment %s is not applied); --feature-cache-views K caches K augmented "
            "views, --no-feature-cache runs the backbone every epoch",
            options.augment,
        )
    shape = split.item_shape if split is not None else None
    train_loader, val_loader = _loaders(
        options, train_views, val_feats, train_data, val_data, shape, generator
    )
    info = {
        "used": True,
        "hit": all(extract.hits),
        "images_extracted": extract.extracted,
        "views": views,
        "augmentation_applied": views > 0,
        "seconds": time.perf_counter() - t0,
    }
    if split is not None:
        info["prefix"] = split.describe()
    log.info(
        "feature cache: %s (%d images run through the %s, %.1fs)",
        "hit" if info["hit"] else "filled",
        extract.extracted,
        f"frozen stages up to {split.boundary}" if split is not None else "backbone",
        info["seconds"],
    )
    fit_model = PrefixModel(model, split) if split is not None else CachedHead(model)
    return FeatureLoaders(train_loader, val_loader, fit_model, info)


def backbone_features(
    options: Any, source: Source, data: LabeledData, device: torch.device
) -> np.ndarray:
    """The whole backbone's features of ``data``'s un-augmented images, from (or into) the
    feature cache: what a head solved before fine-tuning starts from (LP-FT)."""
    return _Extractor(options, source, None, device)(data, EVAL_VIEW)


class _Extractor:
    """The cache's features of a data set's view, through the backbone or the frozen
    prefix of ``split``; counts the images it had to run and whether each was a hit."""

    def __init__(
        self, options: Any, source: Source, split: Split | None, device: torch.device
    ) -> None:
        self.options, self.source, self.split, self.device = options, source, split, device
        self.weights = state_digest(source.backbone)
        self.extracted = 0
        self.hits: list[bool] = []

    def _count(self, n: int) -> None:
        self.extracted += n

    def __call__(self, data: LabeledData, view: View) -> np.ndarray:
        options, split = self.options, self.split
        feats, hit = cached_features(
            self.source,
            data,
            view,
            device=self.device,
            cache=options.cache_dir,
            batch_size=max(options.batch_size, EVAL_BATCH),
            workers=loader_workers(options.workers, self.device, kind=self.source.inputs.kind),
            progress=options.progress,
            weights_digest=self.weights,
            on_extract=self._count,
            forward=split.prefix if split is not None else None,
            item_shape=split.item_shape if split is not None else None,
            part=split.describe() if split is not None else None,
        )
        self.hits.append(hit)
        return feats


def _extract(
    options: Any,
    extract: _Extractor,
    train_data: LabeledData,
    val_data: LabeledData | None,
    views: int,
) -> tuple[list[np.ndarray], np.ndarray | None]:
    """The training images' features (one array per view) and the validation images'."""
    n_train = len(train_data)
    has_val = val_data is not None and len(val_data) > 0
    if views == 0:
        # One entry for training and validation images together: it then also serves
        # every other split of the same data (cross-validation folds, other seeds).
        both = _concat(train_data, val_data) if has_val and val_data is not None else train_data
        feats = extract(both, EVAL_VIEW)
        return [feats[:n_train]], feats[n_train:] if has_val else None
    train_views = [
        extract(
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
    val_feats = extract(val_data, EVAL_VIEW) if has_val and val_data is not None else None
    return train_views, val_feats


def _loaders(
    options: Any,
    train_views: list[np.ndarray],
    val_feats: np.ndarray | None,
    train_data: LabeledData,
    val_data: LabeledData | None,
    shape: tuple[int, ...] | None,
    generator: torch.Generator,
) -> tuple[DataLoader[Any], DataLoader[Any] | None]:
    """Loaders over the features: the training one batched as the image loader is."""

    def tensor(feats: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(feats)
        return t.view(len(feats), *shape) if shape is not None else t

    targets = torch.as_tensor(train_data.targets, dtype=torch.int64)
    # As the image loader (headstart.sources.inputs.ImageInputs.train_loader): the same batches
    # in the same order (a function of the seed and the epoch), and no last batch of one
    # example (BatchNorm cannot train on it).
    n, bs = len(train_data), options.batch_size
    sampler = EpochBatchSampler(n, bs, seed=options.seed, drop_last=n > bs and 0 < n % bs < 2)
    train_loader: DataLoader[Any] = DataLoader(
        _CachedViews([tensor(v) for v in train_views], targets, sampler),
        batch_sampler=sampler,
        # As the image loader: each pass draws its base seed from this generator, not from
        # torch's global one, whose stream the dropout masks come from.
        generator=generator,
    )
    val_loader = None
    if val_feats is not None and val_data is not None:
        val_loader = DataLoader(
            TensorDataset(tensor(val_feats), torch.as_tensor(val_data.targets, dtype=torch.int64)),
            batch_size=max(options.batch_size, EVAL_BATCH),
            generator=torch.Generator(),  # not torch's global one (dropout's stream)
        )
    return train_loader, val_loader


def _fallback(reason: str) -> FeatureLoaders:
    log.info("feature cache not used: %s; the frozen stages run every epoch", reason)
    return FeatureLoaders(None, None, None, {"used": False, "reason": reason})


def memory_limit() -> int:
    """A quarter of the machine's physical memory: the features are held in memory while
    training, and filling the cache briefly holds a second copy."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4)
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def _too_big(
    split: Split, train_data: LabeledData, val_data: LabeledData | None, views: int
) -> str:
    """Why the prefix's outputs would be too large to cache ('' when they fit)."""
    per_image = 4 * int(np.prod(split.item_shape))
    n_train = len(np.unique(item_digests(train_data)))
    n_val = len(np.unique(item_digests(val_data))) if val_data is not None else 0
    need = per_image * (n_train * max(1, views) + n_val)
    cap, memory = max_bytes(), memory_limit()

    def gb(n: int) -> str:
        return f"{n / 2**30:.2f} GB"

    shape = "x".join(map(str, split.item_shape))
    if need > cap:
        return (
            f"the frozen stages' outputs ({shape} floats per image) would take {gb(need)}, "
            f"over the feature cache's cap of {gb(cap)} (${ENV_MAX_GB})"
        )
    if need > memory:
        return (
            f"the frozen stages' outputs ({shape} floats per image) would take {gb(need)}, "
            f"over a quarter of this machine's memory ({gb(memory)}), which holds them while "
            "training"
        )
    return ""


@contextlib.contextmanager
def threads_for(model: Any) -> Iterator[None]:
    """One thread for a linear head on features (:func:`one_thread`); the trainable
    stages of ``partial:K`` are convolutions and attention that do use threads."""
    if isinstance(model, CachedHead):
        with one_thread():
            yield
    else:
        yield


def _concat(a: LabeledData, b: LabeledData) -> LabeledData:
    if list(a.classes) != list(b.classes):
        raise ConfigError("training and validation data have different classes")
    return replace(
        a,
        items=list(a.items) + list(b.items),
        targets=np.concatenate([a.targets, b.targets]),
        note="training and validation",
    )

"""``timm:NAME`` sources: any model of the timm zoo, e.g. ``timm:resnet18``.

A pretrained tag may be given too (``timm:resnet18.a1_in1k``): it picks the default
weights and their preprocessing.  The old classifier is removed with timm's own
``reset_classifier(0)``, so the body returns pooled features; stages follow timm's own
coarse parameter grouping (``group_matcher``), the one it uses for layer-wise decay.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import timm
import timm.data
import torch
from timm.models._manipulate import group_with_matcher
from torch import nn

from headstart.data.transforms import Preprocessing
from headstart.errors import SourceError, WeightsError
from headstart.sources._zoo import StateFix, detached_head, load_weights_file
from headstart.sources.base import RANDOM_WEIGHTS, Backbone, BuildOptions, Source, unknown_name
from headstart.weights.download import download
from headstart.weights.resolve import (
    WEIGHT_SUFFIXES,
    Remote,
    cache_dir,
    parse_weights,
    url_filename,
    weights_file,
)

__all__ = ["TimmAdapter"]

log = logging.getLogger(__name__)


def _create(name: str, image_size: int | None) -> nn.Module:
    if not timm.is_model(name):
        raise unknown_name("timm", name, timm.list_models())
    kwargs: dict[str, Any] = {}
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError as exc:  # an unknown pretrained tag
        arch = name.split(".", 1)[0]
        raise unknown_name("timm", name, timm.list_pretrained(f"{arch}.*") or [arch]) from exc
    # Models with a fixed input size (ViT-like) are built for the size they will see;
    # convolutional ones take any size as they are.
    if image_size is not None and cfg is not None and cfg.fixed_input_size:
        kwargs["img_size"] = image_size
    try:
        model: nn.Module = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as exc:
        if not kwargs:
            raise SourceError(f"cannot build timm:{name}: {exc}") from exc
        raise SourceError(
            f"timm:{name} has a fixed input size of {cfg.input_size[-1] if cfg else '?'} "
            f"and cannot be built for image size {image_size}: {exc}"
        ) from exc
    except (RuntimeError, ValueError, AssertionError) as exc:
        raise SourceError(f"cannot build timm:{name}: {exc}") from exc
    return model


def _preprocessing(model: nn.Module) -> Preprocessing:
    cfg = timm.data.resolve_data_config({}, model=model)
    channels, height, width = (int(s) for s in cfg["input_size"])
    return Preprocessing(
        input_size=(channels, height, width),
        mean=tuple(float(m) for m in cfg["mean"]),
        std=tuple(float(s) for s in cfg["std"]),
        interpolation=str(cfg.get("interpolation", "bilinear")),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
    )


def _classifier_prefixes(cfg: dict[str, Any]) -> tuple[str, ...]:
    classifier = cfg.get("classifier")
    if not classifier:
        return ()
    if isinstance(classifier, str):
        return (classifier,)
    return tuple(str(c) for c in classifier)  # distilled models: ("head", "head_dist")


def _stages(model: nn.Module, matcher: Any) -> tuple[list[str], dict[str, int]]:
    """timm's coarse grouping (``matcher``) of every parameter and buffer, a stage per group.

    Groups are named by the module most of their tensors live under and no other group
    reaches into (``layer1``, ``blocks.3``, ``norm``); the first group is the ``stem``.
    """
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    group_of: dict[str, int] = group_with_matcher(
        iter([(n, n) for n in names]), matcher, reverse=True
    )
    ids = sorted(set(group_of.values()))
    index = {g: i for i, g in enumerate(ids)}
    assignment = {n: index[g] for n, g in group_of.items()}

    # which stages each module prefix reaches into
    reach: dict[str, set[int]] = {}
    for n in names:
        parts = n.split(".")
        for k in range(1, len(parts) + 1):
            reach.setdefault(".".join(parts[:k]), set()).add(assignment[n])

    def exclusive_prefix(name: str) -> str:
        parts = name.split(".")
        for k in range(1, len(parts) + 1):
            prefix = ".".join(parts[:k])
            if len(reach[prefix]) == 1:
                return prefix
        return name

    stage_names: list[str] = []
    for i in range(len(ids)):
        members = [n for n in names if assignment[n] == i]
        # most_common keeps first-seen order among ties
        label = "stem" if i == 0 else Counter(map(exclusive_prefix, members)).most_common(1)[0][0]
        stage_names.append(label if label not in stage_names else f"stage{i}")
    return stage_names, assignment


def _filter_for(model: nn.Module) -> StateFix | None:
    """timm's own converter for checkpoints of this architecture, if it has one.

    It maps keys of original (non-timm) releases and resizes position embeddings to the
    model's image size, as ``timm.create_model(pretrained=True)`` would.
    """
    fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if not callable(fn):
        return None

    def fix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        try:
            return dict(fn(state, model))
        except Exception as exc:  # a converter meant for other checkpoints: load as is
            log.debug("timm checkpoint_filter_fn not applied: %s", exc)
            return state

    return fix


def _hub_url(cfg: dict[str, Any]) -> str:
    filename = cfg.get("hf_hub_filename") or "model.safetensors"
    return f"https://huggingface.co/{cfg['hf_hub_id']}/resolve/main/{filename}"


def _pretrained_cfg(name: str) -> dict[str, Any]:
    """timm's pretrained config for ``name`` (with or without a tag), without building it."""
    if not timm.is_model(name):
        raise unknown_name("timm", name, timm.list_models())
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError as exc:  # an unknown pretrained tag
        arch = name.split(".", 1)[0]
        raise unknown_name("timm", name, timm.list_pretrained(f"{arch}.*") or [arch]) from exc
    return dict(cfg.to_dict()) if cfg is not None else {}


def _default_location(name: str, cfg: dict[str, Any], cache: Path) -> Remote:
    """Where the zoo's weights for ``name`` come from, and where the cache keeps them.

    A file from ``url`` already in the cache (torch hub's folder, where timm itself puts
    it) is used; otherwise the Hugging Face Hub copy is preferred, as timm does: those
    are already in timm's layout, while some ``url`` files are not state dicts.  timm
    publishes no hashes: a file is checked against the one recorded when it was stored.
    """
    url = str(cfg.get("url") or "")
    loadable_url = url if url.split("?", 1)[0].endswith(WEIGHT_SUFFIXES) else ""
    if loadable_url and (cache / url_filename(loadable_url)).is_file():
        return Remote(loadable_url, cache / url_filename(loadable_url))
    if cfg.get("hf_hub_id"):
        hub_url = _hub_url(cfg)
        # every Hub file is called model.safetensors: one folder per Hub repo
        folder = cache / str(cfg["hf_hub_id"]).replace("/", "--")
        return Remote(hub_url, folder / url_filename(hub_url))
    if loadable_url:
        return Remote(loadable_url, cache / url_filename(loadable_url))
    raise WeightsError(
        f"timm:{name} has no default weights headstart can fetch"
        + (f" ({url} is not a state dict file)" if url else "")
        + "; pass --weights FILE with a timm state dict, or --weights none"
    )


def _imagenet_classes(model: nn.Module) -> tuple[str, ...] | None:
    try:
        subset = timm.data.infer_imagenet_subset(model)
        if not subset:
            return None
        return tuple(timm.data.ImageNetInfo(subset).label_descriptions())
    except Exception:  # optional metadata: no class names is fine
        return None


class TimmAdapter:
    """Builds ``timm:NAME`` sources; weights ``default`` are the zoo's for NAME's tag."""

    family = "timm"

    def names(self) -> list[str]:
        return list(timm.list_models())

    def default_location(self, name: str, *, cache: str | None = None) -> Remote:
        """Where NAME's default weights come from, and where the cache keeps them."""
        return _default_location(name, _pretrained_cfg(name), cache_dir(cache))

    def build(self, name: str, *, weights: str, options: BuildOptions) -> Source:
        request = parse_weights(weights)  # a bad path fails before any building
        # an nn.Module with timm's contract: get_classifier, reset_classifier, group_matcher
        model: Any = _create(name, options.image_size)
        cfg: dict[str, Any] = dict(model.pretrained_cfg)
        preprocessing = _preprocessing(model).with_image_size(options.image_size)
        head_prefixes = _classifier_prefixes(cfg)

        classifier = model.get_classifier()
        if isinstance(classifier, tuple):  # distilled: keep the main head
            classifier = classifier[0]
        old_head = detached_head(classifier)
        fix = _filter_for(model)
        model.reset_classifier(0)
        # timm's own promise: what forward() returns once the classifier is gone
        feature_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
        stage_names, assignment = _stages(model, model.group_matcher(coarse=True))
        backbone = Backbone(
            model, stage_names=stage_names, assignment=assignment, feature_dim=feature_dim
        )

        origin = RANDOM_WEIGHTS
        if request.kind != "none":
            if request.kind == "default":
                remote = _default_location(name, cfg, cache_dir(options.cache_dir))
                path = download(
                    remote.url, remote.dest, sha256=remote.sha256, for_spec=f"timm:{name}"
                )
                tag = f".{cfg['tag']}" if cfg.get("tag") else ""
                description = f"timm {cfg.get('architecture', name)}{tag}"
                classes = _imagenet_classes(model) if cfg.get("num_classes") == 1000 else None
            else:
                path, classes = weights_file(request, cache=options.cache_dir), None
                description = request.describe_file(path)
            origin, old_head = load_weights_file(
                model,
                path,
                spec=request.spec,
                description=description,
                head_prefixes=head_prefixes,
                old_head=old_head,
                strict=options.strict,
                fix=fix,
                source_classes=classes,
            )
        return Source(
            spec=f"timm:{name}",
            arch=f"timm:{name}",
            backbone=backbone,
            preprocessing=preprocessing,
            weights=origin,
            old_head=old_head,
            arch_options={"image_size": options.image_size} if options.image_size else {},
        )

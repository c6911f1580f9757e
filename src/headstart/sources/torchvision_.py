"""``torchvision:NAME`` sources: the classification models of ``torchvision.models``.

The old output layer (the last ``nn.Linear``, the model's output) is replaced by an
identity, so the body returns the features that layer read.  Stages follow the order of
the forward pass (``_stage_table``); the preprocessing comes from the weights' own
transforms, even for random weights, so a model is always fed what its zoo weights expect.

Refused: SqueezeNet, whose output layer is a convolution (no feature vector to keep).
GoogLeNet and Inception v3 are built without their auxiliary classifiers (their weights
are dropped with the old output layer) and with ``transform_input=True``, as their zoo
weights expect.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torchvision
from torch import nn

from headstart.data.transforms import Preprocessing
from headstart.errors import SourceError
from headstart.sources._zoo import StateFix, load_weights_file
from headstart.sources.base import (
    RANDOM_WEIGHTS,
    Backbone,
    BuildOptions,
    Source,
    assign_by_prefix,
    unknown_name,
)
from headstart.weights.download import download
from headstart.weights.resolve import (
    Remote,
    cache_dir,
    hash_prefix_in_name,
    parse_weights,
    url_filename,
    weights_file,
)

__all__ = ["TorchvisionAdapter"]

_REFUSED = {
    "squeezenet1_0": "its output layer is a convolution, not a Linear layer",
    "squeezenet1_1": "its output layer is a convolution, not a Linear layer",
}

# Built without auxiliary classifiers; their tensors in a file belong to the old head.
_AUX_HEADS = {"googlenet": ("aux1", "aux2"), "inception_v3": ("AuxLogits",)}

# Top-level containers whose children are each a stage.
_CONTAINERS = ("features", "layers", "trunk_output", "blocks")
_NORMS = (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)


def _all_names() -> list[str]:
    return list(torchvision.models.list_models(module=torchvision.models))


def _families(names: Sequence[str]) -> list[str]:
    """Model families (the torchvision module each builder lives in)."""
    return sorted(
        {torchvision.models.get_model_builder(n).__module__.rsplit(".", 1)[-1] for n in names}
    )


def _create(name: str, image_size: int) -> nn.Module:
    kwargs: dict[str, Any] = {}
    if name in _AUX_HEADS:
        kwargs.update(aux_logits=False, transform_input=True, init_weights=True)
    if name.startswith("vit_"):
        kwargs["image_size"] = image_size
    if name.startswith("maxvit_"):
        kwargs["input_size"] = (image_size, image_size)
    try:
        model: nn.Module = torchvision.models.get_model(name, weights=None, **kwargs)
    except (TypeError, ValueError, RuntimeError, AssertionError) as exc:
        raise SourceError(
            f"cannot build torchvision:{name} for image size {image_size}: {exc}"
        ) from exc
    return model


def _check_image_size(name: str, size: int | None, trained: int) -> None:
    """Refuse images smaller than a CNN's minimum (its weights' ``min_size`` metadata).

    For transformers ``min_size`` is the size the weights were trained at, not a limit:
    they are built for the size asked (ViT, MaxViT) or pad to their window (Swin).
    """
    min_size = torchvision.models.get_model_weights(name).DEFAULT.meta.get("min_size")
    if size is None or not min_size or min(min_size) >= trained:
        return
    if size < min(min_size):
        raise SourceError(
            f"torchvision:{name} needs images of at least {min_size[0]}x{min_size[1]} "
            f"pixels; image size {size} is too small"
        )


def _output_layer(name: str, model: nn.Module) -> tuple[str, nn.Linear]:
    """The model's output layer: the last Linear registered (torchvision's convention)."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise SourceError(f"torchvision:{name} is not supported: its output is not a Linear layer")
    return linears[-1]


def _replace(model: nn.Module, qualified: str, new: nn.Module) -> None:
    parent_name, _, child = qualified.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _generic_stages(model: nn.Module) -> list[tuple[str, list[str]]]:
    """Each top-level child with state is a stage, in registration (= forward) order;
    the children of ``features`` / ``layers`` / ``trunk_output`` / ``blocks`` each are a
    stage; a norm layer right after a bare convolution joins it; the first is ``stem``."""
    stages: list[tuple[str, list[str]]] = []
    last: nn.Module | None = None
    for name, child in model.named_children():
        if name in _CONTAINERS and isinstance(child, (nn.Sequential, nn.ModuleList)):
            items = [(f"{name}.{n}", c) for n, c in child.named_children()]
        else:
            items = [(name, child)]
        for qualified, module in items:
            if not _has_state(module):
                continue
            if isinstance(module, _NORMS) and isinstance(last, nn.Conv2d):
                stages[-1][1].append(qualified)
            else:
                stages.append((qualified, [qualified]))
            last = module
    if stages:
        stages[0] = ("stem", stages[0][1])
    return stages


def _pooling_blocks(model: Any) -> list[tuple[str, list[str]]]:
    """VGG / AlexNet (``model``): the convolutions between two max-pools are a block."""
    stages: list[tuple[str, list[str]]] = []
    current: list[str] = []
    for n, m in model.features.named_children():
        if _has_state(m):
            current.append(f"features.{n}")
        if isinstance(m, nn.MaxPool2d) and current:
            stages.append((f"block{len(stages) + 1}", current))
            current = []
    if current:
        stages.append((f"block{len(stages) + 1}", current))
    if _has_state(model.classifier):
        stages.append(("classifier", ["classifier"]))
    return stages


def _vit_stages(model: Any) -> list[tuple[str, list[str]]]:
    """A torchvision VisionTransformer: embeddings, each encoder layer, final norm."""
    layers = [f"encoder.layers.{n}" for n, _ in model.encoder.layers.named_children()]
    return [
        ("embed", ["conv_proj", "class_token", "encoder.pos_embedding"]),
        *((layer, [layer]) for layer in layers),
        ("encoder.ln", ["encoder.ln"]),
    ]


def _stage_table(model: nn.Module) -> list[tuple[str, list[str]]]:
    kind = type(model).__name__
    if kind == "VisionTransformer":
        return _vit_stages(model)
    if kind in ("VGG", "AlexNet"):
        return _pooling_blocks(model)
    return _generic_stages(model)


def _preprocessing(name: str) -> Preprocessing:
    t = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
    return Preprocessing(
        input_size=(3, crop, crop),
        mean=tuple(float(m) for m in t.mean),
        std=tuple(float(s) for s in t.std),
        interpolation=str(t.interpolation.value),
        crop_pct=crop / resize,
    )


_DENSE_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def _state_fix(model: nn.Module) -> StateFix | None:
    """What torchvision's own builders do to a checkpoint before loading it."""
    kind = type(model).__name__
    if kind == "DenseNet":

        def dense_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            # Old DenseNet checkpoints (the zoo's too) name layers "norm.1" for "norm1".
            out = {}
            for k, v in state.items():
                m = _DENSE_KEY.match(k)
                out[m.group(1) + m.group(2) if m else k] = v
            return out

        return dense_keys
    if kind == "VisionTransformer":
        from torchvision.models.vision_transformer import interpolate_embeddings

        vit: Any = model  # a torchvision VisionTransformer

        def position_embedding(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            pos = state.get("encoder.pos_embedding")
            own = vit.encoder.pos_embedding
            if pos is None or pos.ndim != 3 or tuple(pos.shape) == tuple(own.shape):
                return state
            # weights for another image size: resample the position grid, as torchvision does
            return dict(
                interpolate_embeddings(
                    image_size=int(vit.image_size),
                    patch_size=int(vit.patch_size),
                    model_state=OrderedDict(state),
                )
            )

        return position_embedding
    return None


class TorchvisionAdapter:
    """Builds ``torchvision:NAME`` sources; weights ``default`` are NAME's DEFAULT weights."""

    family = "torchvision"

    def names(self) -> list[str]:
        return [n for n in _all_names() if n not in _REFUSED]

    def default_location(self, name: str, *, cache: str | None = None) -> Remote:
        """Where NAME's DEFAULT weights come from, and where the cache keeps them: under
        torchvision's own file name, whose hash prefix the file must match."""
        self._check_name(name)
        url = torchvision.models.get_model_weights(name).DEFAULT.url
        return Remote(url, cache_dir(cache) / url_filename(url), hash_prefix_in_name(url))

    def _check_name(self, name: str) -> None:
        if name in _REFUSED:
            raise SourceError(
                f"torchvision:{name} is not supported: {_REFUSED[name]}; supported "
                f"torchvision families: {', '.join(_families(self.names()))}"
            )
        if name not in _all_names():
            raise unknown_name("torchvision", name, self.names())

    def build(self, name: str, *, weights: str, options: BuildOptions) -> Source:
        request = parse_weights(weights)  # a bad path fails before any building
        self._check_name(name)
        preprocessing = _preprocessing(name)
        _check_image_size(name, options.image_size, preprocessing.input_size[-1])
        # Transformers are built for one image size: the one asked for, else their weights'.
        model = _create(name, options.image_size or preprocessing.input_size[-1])
        head_name, head = _output_layer(name, model)
        _replace(model, head_name, nn.Identity())
        old_head: nn.Module | None = head
        stage_names, assignment = assign_by_prefix(model, _stage_table(model))
        backbone = Backbone(
            model,
            stage_names=stage_names,
            assignment=assignment,
            feature_dim=head.in_features,
        )

        origin = RANDOM_WEIGHTS
        if request.kind != "none":
            classes: tuple[str, ...] | None = None
            if request.kind == "default":
                zoo = torchvision.models.get_model_weights(name).DEFAULT
                remote = self.default_location(name, cache=options.cache_dir)
                path = download(
                    remote.url, remote.dest, sha256=remote.sha256, for_spec=f"torchvision:{name}"
                )
                description = f"torchvision {zoo}"
                classes = tuple(zoo.meta["categories"])
            else:
                path = weights_file(request, cache=options.cache_dir)
                description = request.describe_file(path)
            origin, old_head = load_weights_file(
                model,
                path,
                spec=request.spec,
                description=description,
                head_prefixes=(head_name, *_AUX_HEADS.get(name, ())),
                old_head=old_head,
                strict=options.strict,
                fix=_state_fix(model),
                source_classes=classes,
            )
        return Source(
            spec=f"torchvision:{name}",
            arch=f"torchvision:{name}",
            backbone=backbone,
            preprocessing=preprocessing.with_image_size(options.image_size),
            weights=origin,
            old_head=old_head,
            arch_options={"image_size": options.image_size} if options.image_size else {},
        )

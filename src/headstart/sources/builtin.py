"""Built-in sources: small CNNs sized for the built-in data, trainable on a CPU in seconds.

``builtin:digits-cnn`` takes 8x8 grayscale digits (scikit-learn's digits).  Its default
weights are made by headstart itself on first use, by pre-training on digits 0-4 (so
digits 5-9 stay a fair target), and kept in the cache folder.  ``builtin:small-cnn``
takes 32x32 RGB images and has no default weights (pre-train it with ``headstart
pretrain``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from headstart.data.transforms import Preprocessing
from headstart.errors import WeightsError
from headstart.sources.base import (
    RANDOM_WEIGHTS,
    Backbone,
    BuildOptions,
    Source,
    assign_by_prefix,
    unknown_name,
)
from headstart.sources.file import load_headstart_weights
from headstart.weights.download import cache_writer
from headstart.weights.resolve import cache_dir, parse_weights, weights_file

__all__ = ["BUILTIN_MODELS", "BuiltinAdapter", "SmallCNN"]

log = logging.getLogger(__name__)


def _block(cin: int, cout: int, *, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """stem -> block1 -> block2 -> block3 -> global average pool -> fc."""

    def __init__(
        self,
        in_chans: int,
        widths: tuple[int, int, int, int],
        pools: tuple[bool, ...],
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        w0, w1, w2, w3 = widths
        self.stem = _block(in_chans, w0, pool=pools[0])
        self.block1 = _block(w0, w1, pool=pools[1])
        self.block2 = _block(w1, w2, pool=pools[2])
        self.block3 = _block(w2, w3, pool=pools[3])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(w3, num_classes)
        self.num_features = w3

    def forward(self, x):  # type: ignore[no-untyped-def]
        x = self.block3(self.block2(self.block1(self.stem(x))))
        return self.fc(self.pool(x))


STAGES = ("stem", "block1", "block2", "block3")


@dataclass(frozen=True)
class BuiltinModel:
    make: Callable[[], SmallCNN]
    preprocessing: Preprocessing
    summary: str
    # how the default weights are made when they are missing: a pre-training recipe
    # (PretrainOptions fields) that BuildOptions.make_weights runs (None: no defaults)
    recipe: dict[str, Any] | None = None
    default_file: str | None = None


# How builtin:digits-cnn's default weights are made (the demo pre-trains the same way).
# Label smoothing made the frozen features transfer better to digits 5-9: a logistic
# regression on them scored 0.78 against 0.70 without it (5 labels per class, 3 seeds).
# The schedule is pinned (not sized from the data) so that the weights stay the ones the
# cached file name (v1) stands for.
DIGITS_PRETRAIN: dict[str, Any] = {
    "epochs": 15,
    "batch_size": 32,
    "lr": 1e-3,
    "select": "best",
    "val_fraction": 0.2,
    "label_smoothing": 0.1,
    "seed": 0,
}


def _trained_on(model: BuiltinModel) -> str:
    """What its default weights were trained on, as its summary says ("digits 0-4")."""
    return model.summary.split(": ")[-1]


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "digits-cnn": BuiltinModel(
        make=lambda: SmallCNN(1, (32, 32, 64, 128), (False, False, True, False)),
        # scikit-learn digits scaled to [0, 1]: mean and std over the whole set.
        preprocessing=Preprocessing(
            input_size=(1, 8, 8), mean=(0.305,), std=(0.377,), crop_pct=1.0
        ),
        summary="4-stage CNN for 8x8 grayscale digits; default weights: digits 0-4",
        recipe={"data": "builtin:digits?classes=0-4", **DIGITS_PRETRAIN},
        default_file="headstart-digits-cnn-digits0-4-v1.safetensors",
    ),
    "small-cnn": BuiltinModel(
        make=lambda: SmallCNN(3, (32, 64, 128, 256), (True, True, True, False)),
        preprocessing=Preprocessing(
            input_size=(3, 32, 32),
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            crop_pct=1.0,
        ),
        summary="4-stage CNN for 32x32 RGB images; no default weights",
    ),
}


def _recorded_classes(meta_path: Path) -> tuple[str, ...] | None:
    import json

    try:
        return tuple(json.loads(meta_path.read_text())["classes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class BuiltinAdapter:
    family = "builtin"

    def names(self) -> list[str]:
        return sorted(BUILTIN_MODELS)

    def build(self, name: str, *, weights: str, options: BuildOptions) -> Source:
        if name not in BUILTIN_MODELS:
            raise unknown_name("builtin", name, BUILTIN_MODELS)
        spec = BUILTIN_MODELS[name]
        model = spec.make()
        old_head = model.fc
        model.fc = nn.Identity()  # type: ignore[assignment]
        stage_names, assignment = assign_by_prefix(model, [(s, [s]) for s in STAGES])
        backbone = Backbone(
            model,
            stage_names=stage_names,
            assignment=assignment,
            feature_dim=model.num_features,
        )
        arch_options = {"image_size": options.image_size} if options.image_size else {}
        source = Source(
            spec=f"builtin:{name}",
            arch=f"builtin:{name}",
            backbone=backbone,
            preprocessing=spec.preprocessing.with_image_size(options.image_size),
            weights=RANDOM_WEIGHTS,
            old_head=old_head,
            arch_options=arch_options,
        )
        request = parse_weights(weights)
        if request.kind == "none":
            return source
        if request.kind == "default":
            if spec.recipe is None or spec.default_file is None:
                raise WeightsError(
                    f"builtin:{name} has no default weights; use --weights none, a weights "
                    f"file, or pre-train it: headstart pretrain DATA --source builtin:{name}"
                )
            path = cache_dir(options.cache_dir) / spec.default_file
            if not path.is_file():
                if options.make_weights is None:
                    raise WeightsError(
                        f"builtin:{name}'s default weights are not built yet ({path}): build "
                        "the source through headstart (fit, rank, embed...), which pre-trains "
                        "them once, or pass BuildOptions(make_weights=...)"
                    )
                # one process makes them; another one waits, then loads them
                with cache_writer(path):
                    if not path.is_file():
                        log.info(
                            "building builtin:%s's default weights on %s (once, cached at %s)",
                            *(name, _trained_on(spec), path),
                        )
                        options.make_weights(f"builtin:{name}", spec.recipe, path)
            description = f"builtin:{name} default weights ({_trained_on(spec)})"
        else:
            path = weights_file(request, cache=options.cache_dir)
            description = request.describe_file(path)
        load_headstart_weights(
            source,
            path,
            spec=request.spec,
            description=description,
            strict=options.strict,
            source_classes=_recorded_classes(path.with_suffix(".json")),
        )
        if source.old_head is None:
            source.old_head = old_head
        return source

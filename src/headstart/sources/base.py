"""The contract every source adapter obeys.

A *source* is a pretrained model minus its old output layer: a :class:`Backbone` that
maps a batch of images to feature vectors, split into ordered *stages* (for freezing),
with the :class:`Preprocessing` its weights expect and a record of where the weights
came from (:class:`WeightsOrigin`).  Adapters (one per model family: ``builtin``,
``timm``, ``torchvision``, ``file``) build sources from a spec such as ``timm:resnet18``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from headstart.data.transforms import Preprocessing
from headstart.errors import SourceError
from headstart.registry import Registry
from headstart.sources.inputs import ImageInputs, Inputs, TextInputs

__all__ = [
    "ADAPTERS",
    "Backbone",
    "BuildOptions",
    "Preprocessing",
    "Source",
    "SourceAdapter",
    "TextInputs",
    "WeightsOrigin",
    "assign_by_prefix",
    "build_source",
    "parse_source_spec",
    "unknown_name",
]


@dataclass(frozen=True)
class WeightsOrigin:
    """Where a source's weights came from, as saved in ``headstart.json``."""

    spec: str  # what the user asked for: "default", "none", a path
    description: str  # human words: "torchvision ResNet18_Weights.IMAGENET1K_V1", "random"
    pretrained: bool
    path: str | None = None
    sha256: str | None = None
    source_classes: tuple[str, ...] | None = None  # classes of the old output layer, if known
    dropped_keys: tuple[str, ...] = ()  # old output layer keys left out when loading
    missing_keys: tuple[str, ...] = ()
    unexpected_keys: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("source_classes", "dropped_keys", "missing_keys", "unexpected_keys"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WeightsOrigin:
        sc = d.get("source_classes")
        return cls(
            spec=str(d["spec"]),
            description=str(d["description"]),
            pretrained=bool(d["pretrained"]),
            path=d.get("path"),
            sha256=d.get("sha256"),
            source_classes=tuple(sc) if sc is not None else None,
            dropped_keys=tuple(d.get("dropped_keys", ())),
            missing_keys=tuple(d.get("missing_keys", ())),
            unexpected_keys=tuple(d.get("unexpected_keys", ())),
        )


RANDOM_WEIGHTS = WeightsOrigin(spec="none", description="random initialisation", pretrained=False)


class Backbone(nn.Module):
    """A source model without its old output layer.

    ``body(x)`` must return a ``[N, feature_dim]`` tensor.  ``stage_names`` lists the
    stages in forward order; ``assignment`` maps every parameter and buffer name of
    ``body`` to the index of its stage.  Construction fails if a parameter has no stage,
    so an adapter bug surfaces in the contract tests, not as a silently unfrozen weight.
    ``leading_stages`` are the stages ``partial:K`` freezes on top of the first K (a
    transformer's embeddings: ``partial:2`` freezes them and the first 2 layers).
    """

    def __init__(
        self,
        body: nn.Module,
        *,
        stage_names: Sequence[str],
        assignment: dict[str, int],
        feature_dim: int,
        leading_stages: int = 0,
    ) -> None:
        super().__init__()
        self.body = body
        self.leading_stages = int(leading_stages)
        self.stage_names: tuple[str, ...] = tuple(stage_names)
        self.feature_dim = int(feature_dim)
        if not self.stage_names:
            raise SourceError("a backbone needs at least one stage")
        names = [n for n, _ in body.named_parameters()] + [n for n, _ in body.named_buffers()]
        missing = [n for n in names if n not in assignment]
        if missing:
            raise SourceError(f"backbone parameters without a stage: {', '.join(missing[:8])}")
        bad = {n: i for n, i in assignment.items() if not 0 <= i < len(self.stage_names)}
        if bad:
            raise SourceError(f"stage index out of range for: {', '.join(sorted(bad)[:8])}")
        self._assignment = {n: assignment[n] for n in names}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    @property
    def num_stages(self) -> int:
        return len(self.stage_names)

    def stage_of(self, name: str) -> int:
        """Stage index of a parameter or buffer name of ``body`` (without ``body.``)."""
        return self._assignment[name]

    def stage_parameters(self, stages: Iterable[int]) -> list[tuple[str, nn.Parameter]]:
        wanted = set(stages)
        return [(n, p) for n, p in self.body.named_parameters() if self._assignment[n] in wanted]

    def stage_modules(self, stages: Iterable[int]) -> list[nn.Module]:
        """Modules whose parameters and buffers (all, recursively) lie in ``stages``.

        Used to keep frozen stages in eval mode: a BatchNorm layer belongs to the stage of
        its weight and running statistics, and a block whose state is all frozen (with
        any dropout inside it) is frozen as a whole.
        """
        wanted = set(stages)
        out: list[nn.Module] = []
        for mname, module in self.body.named_modules():
            own = [n for n, _ in module.named_parameters()]
            own += [n for n, _ in module.named_buffers()]
            if not own:
                continue
            prefix = f"{mname}." if mname else ""
            if all(self._assignment[prefix + n] in wanted for n in own):
                out.append(module)
        return out


def assign_by_prefix(
    body: nn.Module, stages: Sequence[tuple[str, Sequence[str]]], *, rest: int | None = None
) -> tuple[list[str], dict[str, int]]:
    """Assign parameters and buffers to stages by module-name prefix.

    ``stages`` is ``[(stage_name, [prefix, ...]), ...]`` in forward order; the longest
    matching prefix wins.  Names that match no prefix go to stage ``rest`` (or raise in
    :class:`Backbone` if ``rest`` is None).
    """
    table = sorted(
        ((p, i) for i, (_, prefixes) in enumerate(stages) for p in prefixes),
        key=lambda t: -len(t[0]),
    )
    assignment: dict[str, int] = {}
    names = [n for n, _ in body.named_parameters()] + [n for n, _ in body.named_buffers()]
    for n in names:
        for prefix, idx in table:
            if n == prefix or n.startswith(prefix + "."):
                assignment[n] = idx
                break
        else:
            if rest is not None:
                assignment[n] = rest
    return [s for s, _ in stages], assignment


@dataclass(frozen=True)
class BuildOptions:
    """Options every adapter understands."""

    image_size: int | None = None  # square input size override (tests, small images)
    cache_dir: str | None = None  # where downloaded or self-made weights are kept
    strict: bool = False  # any key mismatch beyond the old output layer is an error
    extra: dict[str, Any] = field(default_factory=dict)
    # Makes default weights that headstart trains itself (builtin:digits-cnn's):
    # ``make_weights(spec, recipe, dest)`` pre-trains ``spec`` as ``recipe`` says and
    # writes the weights at ``dest``.  Training sits layers above the sources, so the
    # layer that can train passes it in (headstart.train.assemble.build_options).
    make_weights: Callable[[str, dict[str, Any], Path], None] | None = None

    @classmethod
    def of(cls, options: Any) -> BuildOptions:
        """From a command's options (``image_size``, ``cache_dir``, ``strict``, ``arch``)."""
        return cls(
            image_size=options.image_size,
            cache_dir=options.cache_dir,
            strict=options.strict,
            extra={"arch": options.arch} if options.arch else {},
        )


@dataclass
class Source:
    """A built source: backbone, preprocessing, weights origin, and the removed head.

    ``inputs`` (:mod:`headstart.sources.inputs`) is what the backbone takes, images or
    texts: the layers above read data, build loaders and check data through it, never
    asking which kind they have.

    ``arch`` is a spec that rebuilds the same architecture with random weights (for a
    ``file:`` source it is the architecture recorded in the file), so a run dir can be
    reloaded without the original weights or any download.
    """

    spec: str
    arch: str
    backbone: Backbone
    preprocessing: Preprocessing
    weights: WeightsOrigin
    old_head: nn.Module | None = None
    arch_options: dict[str, Any] = field(default_factory=dict)
    text: TextInputs | None = None  # set for text sources: inputs are tokenized texts
    lora_targets: tuple[str, ...] | None = None  # default LoRA target modules, if known
    # writes what rebuilds the architecture without the original files (config, tokenizer)
    save_files: Any = field(default=None, repr=False)

    @property
    def feature_dim(self) -> int:
        return self.backbone.feature_dim

    @property
    def stage_names(self) -> tuple[str, ...]:
        return self.backbone.stage_names

    @property
    def inputs(self) -> Inputs:
        """What the backbone takes: its tokenized texts, or images prepared as
        ``preprocessing`` says (read when asked: a scratch build may replace it)."""
        return self.text if self.text is not None else ImageInputs(self.preprocessing)

    def describe(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "arch": self.arch,
            "arch_options": dict(self.arch_options),
            "feature_dim": self.feature_dim,
            "stages": list(self.stage_names),
            "preprocessing": self.preprocessing.to_dict(),
            "weights": self.weights.to_dict(),
            "parameters": sum(p.numel() for p in self.backbone.parameters()),
            **({"text": self.text.to_dict()} if self.text is not None else {}),
        }


class SourceAdapter(Protocol):
    """One model family.  ``build`` must honour ``weights`` = "default", "none" or a path."""

    family: str

    def build(self, name: str, *, weights: str, options: BuildOptions) -> Source: ...

    def names(self) -> list[str]:
        """Model names this family offers (for error messages and listings)."""
        ...


ADAPTERS: Registry[SourceAdapter] = Registry("source family", SourceError)


def parse_source_spec(spec: str) -> tuple[str, str]:
    """Split ``family:name`` into its parts; the family must be registered."""
    if not isinstance(spec, str) or ":" not in spec:
        raise SourceError(
            f"source {spec!r} must look like FAMILY:NAME (families: "
            f"{', '.join(ADAPTERS.names())}), e.g. timm:resnet18 or builtin:digits-cnn"
        )
    family, name = spec.split(":", 1)
    ADAPTERS.get(family)  # raises with the valid families
    if not name:
        raise SourceError(f"source {spec!r} has no model name after {family!r}:")
    return family, name


def build_source(
    spec: str, *, weights: str = "default", options: BuildOptions | None = None
) -> Source:
    """Build the source named by ``spec`` with ``weights`` ("default", "none" or a path)."""
    family, name = parse_source_spec(spec)
    return ADAPTERS.get(family).build(name, weights=weights, options=options or BuildOptions())


def unknown_name(family: str, name: str, valid: Iterable[str], hint: str = "") -> SourceError:
    """An error for a model name a family does not have, listing close valid names."""
    import difflib

    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=5, cutoff=0.5)
    shown = close or valid[:12]
    more = "" if close or len(valid) <= 12 else f", ... ({len(valid)} in all)"
    msg = f"unknown {family} model {name!r}; valid: {', '.join(shown)}{more}"
    return SourceError(msg + (f". {hint}" if hint else ""))

"""``file:PATH`` sources: a run dir headstart wrote, or a weights file.

- ``file:RUN_DIR`` (a ``pretrain`` or ``fit`` run): the architecture, preprocessing and
  classes come from its ``headstart.json``; the weights from its ``model.safetensors``.
- ``file:MODEL.safetensors`` written by headstart: the architecture is in its header.
- ``file:WEIGHTS`` of any other kind: say which architecture it is for with
  ``BuildOptions.extra["arch"]`` (``--arch`` on the command line), e.g. ``timm:resnet18``.

The old output layer of the file (the source run's head) is dropped and kept as
``Source.old_head``, with the source run's classes in the weights origin.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from headstart._io import sha256_file
from headstart.errors import SourceError
from headstart.sources.base import BuildOptions, Preprocessing, Source, WeightsOrigin, build_source
from headstart.weights import KeyReport, load_into, load_state_dict, read_metadata

__all__ = ["FileAdapter", "LoadedWeights", "load_headstart_weights"]

_HEAD = "__headstart_head__"  # the saved TargetModel's head, renamed so it cannot collide


@dataclass
class LoadedWeights:
    path: Path
    sha256: str
    report: KeyReport
    old_head: nn.Module | None
    source_classes: tuple[str, ...] | None

    def origin(self, *, spec: str, description: str) -> WeightsOrigin:
        return WeightsOrigin(
            spec=spec,
            description=description,
            pretrained=True,
            path=str(self.path),
            sha256=self.sha256,
            source_classes=self.source_classes,
            dropped_keys=tuple(self.report.dropped),
            missing_keys=tuple(self.report.missing),
            unexpected_keys=tuple(self.report.unexpected),
        )


def _head_from_state(state: dict[str, torch.Tensor], prefix: str) -> nn.Module | None:
    weight = state.get(f"{prefix}.weight")
    if weight is None or weight.ndim != 2:
        return None
    bias = state.get(f"{prefix}.bias")
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        head.weight.copy_(weight)
        if bias is not None:
            head.bias.copy_(bias)
    return head


def load_headstart_weights(
    source: Source,
    path: Path,
    *,
    strict: bool = False,
    head_prefixes: tuple[str, ...] = ("fc",),
    source_classes: tuple[str, ...] | None = None,
) -> LoadedWeights:
    """Load a weights file into ``source.backbone.body``.

    A file headstart wrote (keys ``backbone.body.*`` and ``head.*``) is mapped onto the
    body and its head dropped; any other state dict is loaded as the full source model
    whose old output layer lives under ``head_prefixes``.
    """
    state = load_state_dict(path)
    if any(k.startswith("backbone.body.") for k in state):
        mapped: dict[str, torch.Tensor] = {}
        for k, v in state.items():
            if k.startswith("backbone.body."):
                mapped[k[len("backbone.body.") :]] = v
            elif k.startswith("head."):
                mapped[f"{_HEAD}.{k[len('head.') :]}"] = v
            else:
                mapped[k] = v
        state = mapped
        prefixes: tuple[str, ...] = (_HEAD,)
        head_name = _HEAD
    else:
        prefixes = head_prefixes
        head_name = head_prefixes[0] if head_prefixes else ""
    report = load_into(
        source.backbone.body, state, head_prefixes=prefixes, strict=strict, where=str(path)
    )
    return LoadedWeights(
        path=path,
        sha256=sha256_file(path),
        report=report,
        old_head=_head_from_state(report.head_state, head_name) if head_name else None,
        source_classes=source_classes,
    )


def _describe_run(meta: dict[str, Any], where: Path) -> str:
    data = meta.get("data", {}).get("spec", "?")
    strategy = meta.get("plan", {}).get("strategy", "?")
    return f"headstart run {where} ({meta.get('kind', 'fit')} on {data}, {strategy})"


class FileAdapter:
    family = "file"

    def names(self) -> list[str]:
        return []

    def build(self, name: str, *, weights: str, options: BuildOptions) -> Source:
        from headstart.run import META_FILE, MODEL_FILE, read_meta

        path = Path(name).expanduser()
        if not path.exists():
            raise SourceError(
                f"source file:{name}: no such file or folder; give a headstart run dir "
                "(the --out of pretrain or fit) or a weights file"
            )
        if weights not in ("default", str(path)):
            raise SourceError(
                f"source file:{name} brings its own weights; drop --weights {weights} "
                "(or use --source ARCH --weights FILE)"
            )
        meta: dict[str, Any] | None = None
        if path.is_dir():
            if not (path / META_FILE).is_file():
                raise SourceError(
                    f"source file:{name}: folder is not a headstart run dir (no {META_FILE})"
                )
            meta = read_meta(path)
            arch = meta["source"]["arch"]
            arch_options = dict(meta["source"].get("arch_options") or {})
            weights_path = path / MODEL_FILE
        else:
            weights_path = path
            header = read_metadata(path)
            arch = header.get("headstart.arch") or options.extra.get("arch")
            arch_options = json.loads(header.get("headstart.arch_options", "{}"))
            if arch is None:
                raise SourceError(
                    f"source file:{name}: the file does not say which architecture it is for; "
                    "pass --arch SPEC (e.g. --arch timm:resnet18), or use --source SPEC "
                    f"--weights {name}"
                )
            if arch.startswith("file:"):
                raise SourceError(f"source file:{name}: --arch must name a zoo model, not file:")
        if options.image_size and options.image_size != arch_options.get("image_size"):
            arch_options["image_size"] = options.image_size
        base_options = replace(options, image_size=arch_options.get("image_size"))
        if meta is None and not read_metadata(path).get("headstart.arch"):
            # A zoo model's own state dict: its adapter knows where the old head lives.
            source = build_source(arch, weights=str(path), options=base_options)
            source.spec = f"file:{name}"
            return source
        source = build_source(arch, weights="none", options=base_options)
        classes = tuple(meta["classes"]) if meta else None
        loaded = load_headstart_weights(
            source, weights_path, strict=options.strict, source_classes=classes
        )
        if meta is not None:
            source.preprocessing = Preprocessing.from_dict(meta["preprocessing"]).with_image_size(
                options.image_size
            )
        description = _describe_run(meta, path) if meta else f"headstart weights {path}"
        source.spec = f"file:{name}"
        source.weights = loaded.origin(spec=f"file:{name}", description=description)
        source.old_head = loaded.old_head
        source.arch_options = arch_options
        return source

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
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from headstart.data.transforms import Preprocessing
from headstart.errors import SourceError
from headstart.rundir import META_FILE, MODEL_FILE, read_meta
from headstart.sources._zoo import load_weights_file
from headstart.sources.base import BuildOptions, Source, build_source
from headstart.weights.files import read_metadata

__all__ = ["FileAdapter", "load_headstart_weights"]

_HEAD = "__headstart_head__"  # the saved TargetModel's head, renamed so it cannot collide


def _from_target_model(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a saved :class:`~headstart.sources.target.TargetModel` onto its backbone's body.

    ``backbone.body.*`` become the body's keys; the run's head (``head.*``) is renamed so
    that it cannot collide with a body module that happens to be called ``head``.
    """
    if not any(k.startswith("backbone.body.") for k in state):
        return state
    mapped: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k.startswith("backbone.body."):
            mapped[k[len("backbone.body.") :]] = v
        elif k.startswith("head."):
            mapped[f"{_HEAD}.{k[len('head.') :]}"] = v
        else:
            mapped[k] = v
    return mapped


def load_headstart_weights(
    source: Source,
    path: Path,
    *,
    spec: str,
    description: str,
    strict: bool = False,
    source_classes: tuple[str, ...] | None = None,
) -> None:
    """Load a weights file headstart wrote (or a plain state dict of the same
    architecture, whose old output layer is ``fc``) into ``source``, in place:
    its weights origin and old head are set from the file."""
    source.weights, source.old_head = load_weights_file(
        source.backbone.body,
        path,
        spec=spec,
        description=description,
        head_prefixes=(_HEAD, "fc"),
        old_head=None,
        strict=strict,
        fix=_from_target_model,
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
        description = _describe_run(meta, path) if meta else f"headstart weights {path}"
        load_headstart_weights(
            source,
            weights_path,
            spec=f"file:{name}",
            description=description,
            strict=options.strict,
            source_classes=classes,
        )
        if meta is not None:
            source.preprocessing = Preprocessing.from_dict(meta["preprocessing"]).with_image_size(
                options.image_size
            )
        source.spec = f"file:{name}"
        source.arch_options = arch_options
        return source

"""The target model: the source's backbone plus a new output layer sized to the target,
and a finished one loaded back from its run dir.

Loading needs nothing but the folder (:mod:`headstart.rundir` says what is in it): the
architecture is rebuilt from ``headstart.json`` with random weights (no download) and then
filled from ``model.safetensors``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from headstart.data.transforms import Preprocessing
from headstart.errors import RunError
from headstart.rundir import MODEL_FILE, read_meta
from headstart.sources.base import Backbone, BuildOptions, build_source
from headstart.sources.inputs import ImageInputs, Inputs, TextInputs


class TargetModel(nn.Module):
    """``head(dropout(backbone(x)))``: the source minus its output layer, plus a new head.

    The head is a fresh ``nn.Linear(feature_dim, num_classes)``; it is created after the
    weights are loaded (and, in a plan, after freezing), so it is the part that trains.
    """

    def __init__(self, backbone: Backbone, num_classes: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(backbone.feature_dim, num_classes)

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(x)))


@dataclass
class LoadedRun:
    path: Path
    meta: dict[str, Any]
    model: TargetModel
    classes: list[str]
    preprocessing: Preprocessing
    # what the model takes, prepared as it was trained (preprocessing, truncation length)
    inputs: Inputs
    text: TextInputs | None = None  # a text model's tokenizer and pooling

    def columns(self, text_col: str | None, label_col: str | None) -> dict[str, str | None]:
        """The columns to read texts and labels from: as given, else the ones the run was
        trained with (an image run has none: all None unless given)."""
        saved = self.meta.get("text") or {}
        return {
            "text_col": text_col or saved.get("text_col"),
            "label_col": label_col or saved.get("label_col"),
        }


def load_run(path: str | os.PathLike[str]) -> LoadedRun:
    """Load a run dir: the model (in eval mode), its classes and preprocessing."""
    run = Path(path)
    meta = read_meta(run)
    src = meta["source"]
    options = src.get("arch_options") or {}
    # run_dir: a source that saved its own files there (hf: config, tokenizer) rebuilds
    # from them, not from the folder or Hub ID it was first loaded from
    source = build_source(
        src["arch"],
        weights="none",
        options=BuildOptions(image_size=options.get("image_size"), extra={"run_dir": str(run)}),
    )
    model = TargetModel(source.backbone, len(meta["classes"]), dropout=meta.get("dropout", 0.0))
    try:
        state = load_file(str(run / MODEL_FILE))
    except Exception as exc:
        raise RunError(f"{run / MODEL_FILE}: damaged or truncated ({exc})") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise RunError(
            f"{run / MODEL_FILE}: does not match {src['arch']} ({str(exc).splitlines()[0]})"
        ) from exc
    model.eval()
    preprocessing = Preprocessing.from_dict(meta["preprocessing"])
    inputs: Inputs = ImageInputs(preprocessing)
    if source.text is not None:  # cut texts where training did
        saved = meta.get("text", {}).get("max_length", source.text.max_length)
        inputs = replace(source.text, length=int(saved))
    return LoadedRun(
        path=run,
        meta=meta,
        model=model,
        classes=list(meta["classes"]),
        preprocessing=preprocessing,
        text=source.text,
        inputs=inputs,
    )

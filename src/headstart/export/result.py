"""What an export wrote: :class:`ExportResult`; what a folder writer reports: :class:`Written`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ExportResult", "Written"]


@dataclass
class ExportResult:
    """``path``: the file (onnx, torchscript) or folder (timm, hf) written;
    ``preprocessing``: the JSON that says how inputs are prepared (and, in a folder,
    marks it as headstart's export); ``max_abs_diff``: the largest logit difference
    between the export, loaded back, and the run's PyTorch model; ``loader``: the line
    that loads a folder with its ecosystem's own code; ``card``: its README.md."""

    path: Path
    preprocessing: Path
    format: str
    max_abs_diff: float
    loader: str | None = None
    card: Path | None = None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": str(self.path),
            "preprocessing": str(self.preprocessing),
            "format": self.format,
            "max_abs_diff": self.max_abs_diff,
        }
        if self.loader is not None:
            out["loader"] = self.loader
        if self.card is not None:
            out["card"] = str(self.card)
        return out


@dataclass
class Written:
    """What a folder writer (timm, hf) reports: the library that loads the folder and
    how, the Hub's pipeline tag, and how far the folder, loaded back, is from the run;
    ``code``: the Python file in the folder that loading runs (``trust_remote_code``),
    if any; ``tags``: more tags for the Hub."""

    library: str
    pipeline_tag: str
    loader: str  # one line: the call that loads the folder
    usage: str  # a few lines of Python: load, prepare an input, predict
    max_abs_diff: float
    notes: tuple[str, ...] = ()
    code: str | None = None
    tags: tuple[str, ...] = ()

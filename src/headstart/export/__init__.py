"""``headstart export RUN --format onnx|torchscript|timm|hf``: a run's model for other
runtimes and ecosystems.

- ``onnx``, ``torchscript`` (:mod:`.onnx`): one file, any run, with
  ``STEM.preprocessing.json`` beside it.
- ``timm`` (:mod:`.timm_`): a folder ``timm.create_model("local-dir:PATH",
  pretrained=True)`` loads, for runs of a ``timm:`` source.
- ``hf`` (:mod:`.hf`): a folder transformers' Auto classes load, for runs of an ``hf:``
  source (texts pooled by the first token: ``AutoModelForSequenceClassification``; texts
  pooled by mean or max: the same with ``trust_remote_code=True``, the folder's own
  :mod:`.modeling_headstart`, and a sentence-transformers folder too; images:
  ``AutoModelForImageClassification``).

The folders carry a model card (:mod:`.card`) and are written by :mod:`.folder`. Every
export is loaded back and checked against the run's PyTorch model before it is kept.
"""

from __future__ import annotations

import os
from pathlib import Path

from headstart._io import exclusive, writes_to
from headstart.errors import ConfigError
from headstart.export.folder import FOLDER_FORMATS, export_folder
from headstart.export.onnx import DEFAULT_OPSET, FILE_FORMATS, export_file, preprocessing_spec
from headstart.export.result import ExportResult
from headstart.sources.target import LoadedRun, load_run

__all__ = ["FORMATS", "ExportResult", "export", "preprocessing_spec"]

FORMATS = (*FILE_FORMATS, *FOLDER_FORMATS)


def _default_out(loaded: LoadedRun, format: str) -> Path:
    # a folder per format: ONNX and TorchScript would share model.preprocessing.json
    if format in FILE_FORMATS:
        return loaded.path / "export" / format / f"model{FILE_FORMATS[format]}"
    return loaded.path / "export" / format


def export(
    run: str | os.PathLike[str] | LoadedRun,
    *,
    format: str = "onnx",
    out: str | os.PathLike[str] | None = None,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
) -> ExportResult:
    """Export a run's model; return where it went and how closely it matches PyTorch.

    Raises :class:`ConfigError` for an unknown format, a format the run's source cannot
    take, or an ``out`` that is not an earlier export; :class:`RunError` when the export
    does not reproduce the run's model.
    """
    if format not in FORMATS:
        raise ConfigError(f"--format {format!r}; valid: {', '.join(FORMATS)}")
    loaded = run if isinstance(run, LoadedRun) else load_run(run)
    dest = Path(out).expanduser() if out else _default_out(loaded, format)
    with (
        exclusive(dest, label=f"--out {dest}", instead="choose another --out"),
        writes_to(dest, instead="choose another --out"),  # read-only, full disk: say so
    ):
        if format in FILE_FORMATS:
            return export_file(loaded, format, dest, opset, overwrite)
        return export_folder(loaded, format, dest, overwrite)

"""``headstart export RUN --format onnx|torchscript``: a run's model as one file.

Writes the model (``model.onnx`` or ``model.pt``; default folder ``RUN/export``) and,
beside it, ``STEM.preprocessing.json``: the classes in output order and exactly how to
turn an image into the input tensor (mode, resize, crop, scaling, mean and std), so the
exported file can be used without headstart.  The model takes ``float32 [N, C, H, W]``
and returns logits ``[N, num_classes]`` (softmax them for probabilities).

Each export is checked before it is kept: the exported model and the run's PyTorch
model are run on the same random batch (of two sizes, for the dynamic batch axis) and
must agree to within a small tolerance.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from headstart._io import atomic_write_json, fsync_dir
from headstart.errors import ConfigError, RunError
from headstart.export.result import ExportResult
from headstart.sources.target import LoadedRun

__all__ = ["FILE_FORMATS", "export_file", "preprocessing_spec"]

log = logging.getLogger(__name__)

FILE_FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
DEFAULT_OPSET = 18
TOLERANCE = 1e-3  # max |logit difference| accepted between the export and PyTorch


def preprocessing_spec(run: LoadedRun, fmt: str) -> dict[str, Any]:
    """What a user must do to an image before feeding it to the exported model."""
    pre = run.preprocessing
    c, h, w = pre.input_size
    resize = (
        [math.floor(h / pre.crop_pct)]
        if h == w
        else [math.floor(h / pre.crop_pct), math.floor(w / pre.crop_pct)]
    )
    return {
        "format": fmt,
        "classes": list(run.classes),
        "input": {"name": "input", "dtype": "float32", "layout": "NCHW", "shape": ["N", c, h, w]},
        "output": {"name": "logits", "shape": ["N", len(run.classes)], "softmax": True},
        "image_mode": "RGB" if c == 3 else "L",
        "resize": resize,
        "resize_note": "one number: the short side to this, keeping the aspect ratio; "
        "two: to (height, width)",
        "interpolation": pre.interpolation,
        "center_crop": [h, w],
        "scale": 1 / 255,
        "mean": list(pre.mean),
        "std": list(pre.std),
        "steps": [
            f"convert the image to {'RGB' if c == 3 else 'L (grayscale)'} "
            "(transparency over white)",
            f"resize ({pre.interpolation}) as 'resize' says, then centre-crop {h}x{w}",
            "to float32 in [0, 1] (divide by 255), channels first",
            "subtract 'mean' and divide by 'std', per channel",
        ],
        "run_dir": str(run.path),
        "source": run.meta["source"].get("spec"),
    }


def _quiet() -> contextlib.ExitStack:
    """The ONNX exporter prints progress on stdout; keep stdout for --json."""
    stack = contextlib.ExitStack()
    sink = io.StringIO()
    stack.enter_context(contextlib.redirect_stdout(sink))
    stack.callback(lambda: log.debug("%s", sink.getvalue()))
    return stack


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, dest: Path, opset: int) -> None:
    import warnings

    with _quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(dest),
            dynamo=True,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
            opset_version=opset,
            external_data=False,  # one self-contained file (models under 2 GB)
        )


def _run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(["logits"], {"input": x})[0]
    return np.asarray(out)


def _export_torchscript(model: torch.nn.Module, example: torch.Tensor, dest: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(dest))


def _run_torchscript(path: Path, x: np.ndarray) -> np.ndarray:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still works
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return np.asarray(module(torch.from_numpy(x)).numpy())


def _replaceable(dest: Path, side: Path, overwrite: bool) -> None:
    """Refuse to write over anything but an earlier export (a model file with its
    ``.preprocessing.json`` beside it), and over that without ``overwrite``."""
    for f in (dest, side):
        if f.exists() and not overwrite:
            raise ConfigError(f"--out {dest}: {f} exists; pass --overwrite or another --out")
    if (dest.exists() or side.exists()) and not _is_export_spec(side):
        found = dest if dest.exists() else side
        raise ConfigError(
            f"--out {dest}: {found} exists and is not a headstart export (no {side.name} "
            "written by export beside it); headstart never replaces it, even with "
            "--overwrite; choose another --out"
        )


def _is_export_spec(side: Path) -> bool:
    """Whether ``side`` is the preprocessing file an export wrote."""
    try:
        spec = json.loads(side.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(spec, dict) and {"format", "classes", "input", "steps"} <= spec.keys()


def export_file(
    loaded: LoadedRun, format: str, dest: Path, opset: int, overwrite: bool
) -> ExportResult:
    """Write ``dest`` (ONNX or TorchScript) and its preprocessing JSON, checked against
    PyTorch; the caller holds the lock on ``dest``."""
    if dest.is_dir():
        raise ConfigError(f"--out {dest}: is a folder; give a file name")
    side = dest.with_name(dest.stem + ".preprocessing.json")
    _replaceable(dest, side, overwrite)
    model = loaded.model.cpu().eval()
    c, h, w = loaded.preprocessing.input_size
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(2, c, h, w, generator=gen)
    check = torch.randn(3, c, h, w, generator=gen)  # another batch size: the axis is dynamic
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        tmp = staging / dest.name
        try:
            if format == "onnx":
                _export_onnx(model, example, tmp, opset)
            else:
                _export_torchscript(model, example, tmp)
        except Exception as exc:
            raise RunError(
                f"{loaded.path}: cannot export to {format} ({str(exc).splitlines()[0][:200]})"
            ) from exc
        runner = _run_onnx if format == "onnx" else _run_torchscript
        diff = 0.0
        with torch.inference_mode():
            for x in (example, check):
                got = runner(tmp, x.numpy())
                diff = max(diff, float(np.abs(got - model(x).numpy()).max()))
        if not diff <= TOLERANCE:
            raise RunError(
                f"{loaded.path}: the {format} export differs from the PyTorch model by {diff:.3g} "
                f"(more than {TOLERANCE}); not written"
            )
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    atomic_write_json(side, preprocessing_spec(loaded, format))
    log.debug("exported %s (max |logit difference| %.2g): %s", format, diff, dest)
    return ExportResult(path=dest, preprocessing=side, format=format, max_abs_diff=diff)

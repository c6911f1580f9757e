"""headstart export: ONNX and TorchScript give the predictions headstart predict gives.

The inputs are prepared from the exported preprocessing JSON alone, with PIL and numpy,
as a user without headstart would.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import run_cli


@pytest.fixture(scope="module")
def run_dir(digits_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "run"
    result = run_cli(
        "fit",
        digits_folder,
        "--source",
        "builtin:digits-cnn",
        "--weights",
        "none",
        "--strategy",
        "full",
        "--epochs",
        "1",
        "--out",
        out,
        "-q",
    )
    assert result.code == 0, result.stderr
    return out


def _images(digits_folder: Path) -> list[Path]:
    return sorted(digits_folder.rglob("*.png"))[::5]


def _prepare(spec: dict[str, object], paths: list[Path]) -> np.ndarray:
    """The preprocessing JSON's steps, by hand."""
    mode = str(spec["image_mode"])
    resize = [int(v) for v in spec["resize"]]  # type: ignore[attr-defined]
    crop_h, crop_w = (int(v) for v in spec["center_crop"])  # type: ignore[attr-defined]
    assert spec["interpolation"] == "bilinear"
    mean = np.asarray(spec["mean"], dtype=np.float32)
    std = np.asarray(spec["std"], dtype=np.float32)
    out = []
    for path in paths:
        img = Image.open(path).convert(mode)
        w, h = img.size
        if len(resize) == 1:
            short = resize[0]
            size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        else:
            size = (resize[1], resize[0])
        img = img.resize(size, Image.BILINEAR)
        w, h = img.size
        top, left = round((h - crop_h) / 2), round((w - crop_w) / 2)
        img = img.crop((left, top, left + crop_w, top + crop_h))
        arr = np.asarray(img, dtype=np.float32) * float(spec["scale"])  # type: ignore[arg-type]
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        arr = (arr - mean) / std
        out.append(arr.transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def _predicted(run_dir: Path, paths: list[Path]) -> tuple[list[str], np.ndarray]:
    result = run_cli("predict", run_dir, *paths, "--top-k", "3", "--json")
    assert result.code == 0, result.stderr
    rows = result.json()["predictions"]
    classes = json.loads((run_dir / "headstart.json").read_text())["classes"]
    probs = np.zeros((len(rows), len(classes)))
    for r, row in enumerate(rows):
        for t in row["top"]:
            probs[r, classes.index(t["label"])] = t["probability"]
    return [row["label"] for row in rows], probs


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_predicts_like_headstart(
    fmt: str, run_dir: Path, digits_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / ("m.onnx" if fmt == "onnx" else "m.pt")
    result = run_cli("export", run_dir, "--format", fmt, "--out", out, "--json")
    assert result.code == 0, result.stderr
    summary = result.json()
    assert summary["max_abs_diff"] < 1e-3
    spec = json.loads((tmp_path / "m.preprocessing.json").read_text())
    assert spec["classes"] == ["d0", "d1", "d2"]
    paths = _images(digits_folder)
    x = _prepare(spec, paths)
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        logits = session.run(["logits"], {"input": x})[0]
    else:
        module = torch.jit.load(str(out))
        with torch.inference_mode():
            logits = module(torch.from_numpy(x)).numpy()
    labels, probs = _predicted(run_dir, paths)
    got = _softmax(np.asarray(logits, dtype=np.float64))
    assert [spec["classes"][i] for i in got.argmax(1)] == labels
    np.testing.assert_allclose(got, probs, atol=1e-4)


def test_export_refusals(run_dir: Path, tmp_path: Path) -> None:
    bad = run_cli("export", tmp_path / "nope", "--format", "onnx")
    assert bad.code == 1 and "nope" in bad.stderr
    out = tmp_path / "m.pt"
    assert run_cli("export", run_dir, "--format", "torchscript", "--out", out).code == 0
    again = run_cli("export", run_dir, "--format", "torchscript", "--out", out)
    assert again.code == 1 and "--overwrite" in again.stderr
    assert (
        run_cli("export", run_dir, "--format", "torchscript", "--out", out, "--overwrite").code == 0
    )
    usage = run_cli("export", run_dir, "--format", "tflite")
    assert usage.code == 2


def test_each_format_has_its_own_default_place(run_dir: Path, tmp_path: Path) -> None:
    """ONNX and then TorchScript of one run, both to the default place: each in its own
    folder (they would share model.preprocessing.json), neither refused."""
    import shutil

    run = shutil.copytree(run_dir, tmp_path / "run")
    for fmt, name in (("onnx", "model.onnx"), ("torchscript", "model.pt")):
        result = run_cli("export", run, "--format", fmt, "--json")
        assert result.code == 0, result.stderr
        assert (run / "export" / fmt / name).is_file()
        spec = json.loads((run / "export" / fmt / "model.preprocessing.json").read_text())
        assert spec["format"] == fmt

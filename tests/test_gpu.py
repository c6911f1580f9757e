"""What only a CUDA GPU can show: bf16 and channels_last switched on by themselves, a run
trained there that loads and predicts the same on the CPU, torch.compile, and a real
out-of-memory error answered by halving the batch.  Skipped where there is no GPU (CI,
the development machine); run on the lent accelerator machine (bench/RESULTS.md, "One
GPU").
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from headstart.api.fit import fit
from headstart.config.options import FitOptions
from headstart.runtime import loader_workers
from tests.conftest import run_cli, write_digit_pngs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DATA = "builtin:digits?classes=0-4&per_class=30"


def test_a_gpu_fit_uses_bf16_by_itself_and_predicts_the_same_on_the_cpu(tmp_path: Path) -> None:
    data = write_digit_pngs(tmp_path / "digits", digits=range(5), per_class=30)
    run = tmp_path / "run"
    fitted = run_cli(
        "fit", data, "--source", "builtin:digits-cnn", "--weights", "none",
        "--strategy", "full", "--device", "cuda", "--out", run, "--json", "-q",
    )  # fmt: skip
    assert fitted.code == 0, fitted.stderr
    meta = json.loads((run / "headstart.json").read_text())
    assert meta["accel"]["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    assert meta["accel"]["channels_last"] is True
    # no --workers: the GPU gets loader workers (runtime.loader_workers), results unchanged
    assert meta["accel"]["workers"] == loader_workers(None, torch.device("cuda"))
    labels = {}
    for device in ("cuda", "cpu"):
        out = run_cli("predict", run, data, "--device", device, "--json", "-q")
        assert out.code == 0, out.stderr
        labels[device] = [p["label"] for p in out.json()["predictions"]]
    agree = sum(a == b for a, b in zip(labels["cuda"], labels["cpu"], strict=True))
    # bf16 on the GPU against fp32 on the CPU: near-ties may flip, nothing more
    assert agree >= 0.97 * len(labels["cpu"]), agree
    evaluated = run_cli("evaluate", run, data, "--device", "cpu", "--json", "-q")
    assert evaluated.code == 0, evaluated.stderr
    assert evaluated.json()["accuracy"] > 0.8  # 5 classes: chance is 0.2


def test_compile_on_the_gpu(tmp_path: Path) -> None:
    options = FitOptions(
        data=DATA, source="builtin:digits-cnn", weights="none", strategy="full",
        epochs=2, lr=1e-3, compile=True, device="cuda", out=str(tmp_path / "run"),
        progress=False,
    )  # fmt: skip
    result = fit(options)
    meta = json.loads((result.run_dir / "headstart.json").read_text())
    assert meta["accel"]["compile"] is True
    assert meta["metrics"]["epochs_run"] == 2


def test_a_real_out_of_memory_halves_the_batch(tmp_path: Path) -> None:
    # A cap of ~1.5 GB on this process: resnet18 at 224 pixels cannot train 256 images in
    # one batch inside it, and can at a few dozen.
    options = FitOptions(
        data="builtin:digits?per_class=30", source="timm:resnet18", weights="none",
        strategy="full", image_size=224, epochs=1, batch_size=256, lr=1e-3, device="cuda",
        out=str(tmp_path / "run"), progress=False,
    )  # fmt: skip
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(1.5 * 2**30 / torch.cuda.mem_get_info()[1])
    try:
        result = fit(options)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    meta = json.loads((result.run_dir / "headstart.json").read_text())
    assert meta["accel"]["batch_size"] < 256
    assert meta["metrics"]["epochs_run"] == 1

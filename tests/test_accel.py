"""GPU speed-ups, checked where they can be on a CPU: off by default, bf16, OOM halving."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from headstart.api.fit import fit
from headstart.config.options import FitOptions
from headstart.errors import ConfigError
from headstart.sources import build_source
from headstart.sources.target import TargetModel
from headstart.train import accel


def test_cpu_defaults_leave_the_model_alone() -> None:
    options = FitOptions(data="x")
    speed = accel.resolve(options, torch.device("cpu"))
    assert speed == accel.Accel(precision="fp32", channels_last=False, compile=False)
    model = TargetModel(build_source("builtin:digits-cnn", weights="none").backbone, 3)
    assert accel.wrap(model, speed, torch.device("cpu")) is model


def test_bf16_forward_shares_modules_and_keys() -> None:
    torch.manual_seed(0)
    model = TargetModel(build_source("builtin:digits-cnn", weights="none").backbone, 3).eval()
    speed = accel.Accel(precision="bf16", channels_last=True, compile=False)
    wrapped = accel.wrap(model, speed, torch.device("cpu"))
    assert isinstance(wrapped, accel.AcceleratedModel)
    assert wrapped.state_dict().keys() == model.state_dict().keys()
    assert wrapped.head is model.head
    x = torch.randn(4, *build_source("builtin:digits-cnn", weights="none").preprocessing.input_size)
    with torch.no_grad():
        out = wrapped(x)
        ref = model(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=0.1, rtol=0.05)


def _cpu_fit(tmp_path: Path, **kw: Any) -> dict[str, Any]:
    """One epoch of digits-cnn at random on 30 digits, on the CPU: its headstart.json."""
    result = fit(
        FitOptions(
            data="builtin:digits?classes=0-2&per_class=10",
            source="builtin:digits-cnn",
            weights="none",
            strategy="full",
            epochs=1,
            device="cpu",  # channels_last is for a GPU: on one it would be on
            out=str(tmp_path / "run"),
            progress=False,
            **kw,
        )
    )
    return dict(json.loads((result.run_dir / "headstart.json").read_text()))


def test_fit_records_precision(tmp_path: Path) -> None:
    meta = _cpu_fit(tmp_path, precision="bf16")
    assert meta["accel"] == {
        "precision": "bf16",
        "channels_last": False,
        "compile": False,
        "batch_size": 8,  # sized for 24 training items (train.budget)
        "workers": 0,  # on the CPU the training's threads use the cores
    }


def test_fp16_is_refused_with_a_way_out() -> None:
    with pytest.raises(ConfigError, match="bf16"):
        accel.resolve(FitOptions(data="x", precision="fp16"), torch.device("cpu"))


@dataclass
class _Opts:
    batch_size: int


def test_halve_on_oom() -> None:
    tried: list[int] = []

    def run(o: _Opts) -> int:
        tried.append(o.batch_size)
        if o.batch_size > 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return o.batch_size

    assert accel.halve_on_oom(_Opts(32), run) == 8
    assert tried == [32, 16, 8]

    def always(o: _Opts) -> int:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        accel.halve_on_oom(_Opts(4), always)

    def other(o: _Opts) -> int:
        raise ValueError("not memory")

    with pytest.raises(ValueError):
        accel.halve_on_oom(_Opts(32), other)


def test_loader_workers_default_to_the_gpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from headstart import runtime

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert runtime.loader_workers(None, cpu) == 0  # the training's threads use the cores
    assert runtime.loader_workers(3, cpu) == 3  # what is given is kept
    monkeypatch.setattr(runtime, "usable_cpus", lambda: 16)
    assert runtime.loader_workers(None, gpu) == runtime.MAX_AUTO_WORKERS
    assert runtime.loader_workers(None, gpu, processes=4) == 3  # 4 each, one kept back
    monkeypatch.setattr(runtime, "usable_cpus", lambda: 1)
    assert runtime.loader_workers(None, gpu) == 0
    assert runtime.loader_workers(0, gpu) == 0
    monkeypatch.setattr(runtime, "usable_cpus", lambda: 16)
    assert runtime.loader_workers(None, gpu, kind="texts") == 0  # tokenised up front


def test_the_saved_options_keep_workers_unresolved(tmp_path: Path) -> None:
    """headstart.json says how many loader workers ran (accel) and keeps --workers as given
    (config): a run resumed on another device chooses again."""
    meta = _cpu_fit(tmp_path, augment="light")
    assert meta["accel"]["workers"] == 0 and meta["config"]["workers"] is None

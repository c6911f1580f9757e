"""Run dirs: written whole or not at all, loaded with nothing but the folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from headstart.errors import ConfigError, RunError
from headstart.rundir import write_run
from headstart.sources import build_source
from headstart.sources.target import TargetModel, load_run


def _model_and_meta() -> tuple[TargetModel, dict[str, Any]]:
    torch.manual_seed(0)
    source = build_source("builtin:digits-cnn", weights="none")
    model = TargetModel(source.backbone, 3)
    meta = {
        "kind": "fit",
        "source": source.describe(),
        "classes": ["a", "b", "c"],
        "preprocessing": source.preprocessing.to_dict(),
    }
    return model, meta


def test_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    model, meta = _model_and_meta()
    run = write_run(tmp_path / "run", model=model, meta=meta, metrics_rows=[{"epoch": 1}])
    loaded = load_run(run)
    assert loaded.classes == ["a", "b", "c"]
    assert loaded.preprocessing.input_size == (1, 8, 8)
    x = torch.randn(4, 1, 8, 8)
    model.eval()
    assert torch.equal(model(x), loaded.model(x))
    assert (run / "metrics.csv").read_text().splitlines() == ["epoch", "1"]
    stored = json.loads((run / "headstart.json").read_text())
    assert stored["format_version"] == 1 and "torch" in stored["versions"]


def test_a_failure_while_writing_leaves_nothing(tmp_path: Path) -> None:
    model, meta = _model_and_meta()

    def boom(folder: Path) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_run(tmp_path / "run", model=model, meta=meta, metrics_rows=[], extras=boom)
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_only_when_asked(tmp_path: Path) -> None:
    model, meta = _model_and_meta()
    write_run(tmp_path / "run", model=model, meta=meta, metrics_rows=[])
    with pytest.raises(ConfigError, match="--overwrite"):
        write_run(tmp_path / "run", model=model, meta=meta, metrics_rows=[])
    meta["classes"] = ["x", "y", "z"]
    write_run(tmp_path / "run", model=model, meta=meta, metrics_rows=[], overwrite=True)
    assert load_run(tmp_path / "run").classes == ["x", "y", "z"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_damaged_runs_are_reported_by_name(tmp_path: Path) -> None:
    model, meta = _model_and_meta()
    run = write_run(tmp_path / "run", model=model, meta=meta, metrics_rows=[])
    weights = run / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(RunError, match="model.safetensors: damaged or truncated"):
        load_run(run)
    weights.unlink()
    with pytest.raises(RunError, match="no model.safetensors"):
        load_run(run)
    (run / "headstart.json").write_text("{not json")
    with pytest.raises(RunError, match="headstart.json: damaged"):
        load_run(run)
    with pytest.raises(RunError, match="not a headstart run dir"):
        load_run(tmp_path)
    with pytest.raises(RunError, match="no such run dir"):
        load_run(tmp_path / "missing")

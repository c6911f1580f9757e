"""Tracking: what fit and compare log to MLflow and TensorBoard can be read back."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import pytest

from headstart.api.fit import fit
from headstart.config.options import FitOptions
from headstart.errors import ConfigError
from headstart.train.tracking import EXPERIMENT, INSTALL_HINT, Tracker
from tests.conftest import run_cli

DATA = "builtin:digits?classes=0-2&per_class=12"


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _runs(uri: str) -> list[Any]:
    client = _client(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return list(client.search_runs([experiment.experiment_id]))


def _events(folder: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_fit_logs_params_live_metrics_and_files(tmp_path: Path) -> None:
    uri = (tmp_path / "mlruns").as_uri()
    result = fit(
        FitOptions(
            data=DATA,
            weights="none",
            strategy="full",
            epochs=3,
            batch_size=8,
            val_fraction=0.2,  # a validation accuracy per epoch to log
            out=str(tmp_path / "run"),
            progress=False,
            mlflow_uri=uri,
            tensorboard=str(tmp_path / "tb"),
        )
    )
    rows = list(csv.DictReader((result.run_dir / "metrics.csv").open()))
    val_acc = [float(r["val_acc"]) for r in rows]

    (run,) = _runs(uri)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["strategy"] == "full" and run.data.params["epochs"] == "3"
    history = _client(uri).get_metric_history(run.info.run_id, "val_acc")
    assert [m.step for m in history] == [1, 2, 3]
    assert [m.value for m in history] == pytest.approx(val_acc)
    assert run.data.metrics["final_val_acc"] == pytest.approx(result.metrics["val_acc"])
    files = {f.path for f in _client(uri).list_artifacts(run.info.run_id)}
    assert {"model.safetensors", "headstart.json", "metrics.csv", "curves.png"} <= files

    events = _events(tmp_path / "tb" / "run")
    tags = events.Tags()
    assert [e.step for e in events.Scalars("val_acc")] == [1, 2, 3]
    assert [e.value for e in events.Scalars("val_acc")] == pytest.approx(val_acc)
    assert "curves" in tags["images"]
    assert events.Images("curves")[0].width > 100
    assert any("params" in t for t in tags["tensors"])


def test_compare_cli_logs_every_fold_and_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    monkeypatch.chdir(tmp_path)
    uri = (tmp_path / "mlruns").as_uri()
    result = run_cli(
        "compare", DATA, "--weights", "none", "--strategies", "linear,partial:2",
        "--folds", "2", "--epochs", "2", "--batch-size", "8", "--out", "cmp",
        "--mlflow-uri", uri, "--tensorboard", "--json",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    summary = {s["strategy"]: s for s in result.json()["summary"]}
    (run,) = _runs(uri)
    client = _client(uri)
    assert run.data.params["strategies"] == "linear,partial:2"
    # "partial:2" is not a valid MLflow key; it is logged as "partial-2"
    assert run.data.metrics["partial-2/mean_accuracy"] == pytest.approx(
        summary["partial:2"]["mean"]
    )
    for fold in (1, 2):
        history = client.get_metric_history(run.info.run_id, f"partial-2/fold{fold}/val_acc")
        assert [m.step for m in history] == [1, 2]
        # linear's head is solved on the frozen features: one measurement
        history = client.get_metric_history(run.info.run_id, f"linear/fold{fold}/val_acc")
        assert [m.step for m in history] == [1]
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"compare.csv", "compare.md", "compare.html", "compare.png"} <= files
    # --tensorboard alone writes under runs/tensorboard/<out name>
    events = _events(tmp_path / "runs" / "tensorboard" / "cmp")
    assert len(events.Scalars("partial-2/fold2/val_acc")) == 2
    assert events.Scalars("linear/mean_accuracy")[0].value == pytest.approx(
        summary["linear"]["mean"]
    )
    assert "compare" in events.Tags()["images"]
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["config"]["mlflow_uri"]


def test_a_failed_run_is_marked_failed(tmp_path: Path) -> None:
    uri = (tmp_path / "mlruns").as_uri()
    with pytest.raises(RuntimeError), Tracker(mlflow_uri=uri, tensorboard=None) as tracker:
        tracker.start("doomed", {"epochs": 1})
        tracker.log_metrics({"val_acc": 0.5, "val_loss": None, "nan": float("nan")}, step=1)
        raise RuntimeError("training blew up")
    (run,) = _runs(uri)
    assert run.info.status == "FAILED"
    assert set(run.data.metrics) == {"val_acc"}  # None and NaN are not logged


@pytest.mark.parametrize(
    ("module", "flag"),
    [("mlflow.tracking", "--mlflow-uri"), ("torch.utils.tensorboard", "--tensorboard")],
)
def test_a_missing_package_is_one_line_saying_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, flag: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import now fails as if not installed
    with pytest.raises(ConfigError, match=f"{flag} needs .*headstart\\[tracking\\]"):
        Tracker(
            mlflow_uri="file:x" if flag == "--mlflow-uri" else None,
            tensorboard="tb" if flag == "--tensorboard" else None,
        )
    result = run_cli(
        "fit", DATA, "--weights", "none", "--epochs", "1", "--out", tmp_path / "r",
        flag, str(tmp_path / "t"),
    )  # fmt: skip
    assert result.code == 1
    assert INSTALL_HINT in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()  # refused before any work

"""A run that cannot train is stopped with a clear error, not written (#17 item 5)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from headstart.api.fit import fit
from headstart.config.options import FitOptions
from headstart.train.loop import EpochMetrics, TrainState, _warn_if_growing
from tests.conftest import run_cli


@pytest.mark.parametrize("lr", ["nan", "inf", "-1"])
def test_a_rate_that_is_not_a_positive_number_is_refused(
    lr: str, tmp_path: Path, digits_folder: Path
) -> None:
    r = run_cli("fit", digits_folder, "--lr", lr, "--out", tmp_path / "run")
    assert r.code == 1 and "--lr must be" in r.stderr
    assert not (tmp_path / "run").exists()


def test_a_diverging_fit_stops_and_writes_no_run(tmp_path: Path, digits_folder: Path) -> None:
    out = tmp_path / "run"
    r = run_cli(
        "fit", digits_folder, "--strategy", "full", "--weights", "none", "--lr", "1e8",
        "--epochs", "3", "--batch-size", "8", "--out", out,
    )  # fmt: skip
    assert r.code == 1, r.stderr
    assert "training diverged" in r.stderr and "lower --lr" in r.stderr
    assert "internal error" not in r.stderr
    assert not out.exists()  # no run dir with non-finite weights
    # the last good checkpoint (if an epoch ended before the loss broke) is kept, and a
    # new fit at another rate starts over
    again = run_cli("fit", digits_folder, "--epochs", "1", "--out", out, "--overwrite")
    assert again.code == 0, again.stderr


def test_a_growing_loss_is_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    state = TrainState.__new__(TrainState)
    state.progress = type("P", (), {"rows": [{"train_loss": 1.0}]})()  # type: ignore[assignment]

    def row(epoch: int, loss: float) -> EpochMetrics:
        return EpochMetrics(epoch, loss, 0.1, None, None, None, 1.0, 0.1, 0.0)

    with caplog.at_level(logging.WARNING, logger="headstart.train.loop"):
        _warn_if_growing(state, row(2, 3.0))  # below 4x the first epoch's: quiet
        state.progress.rows.append({"train_loss": 3.0})
        _warn_if_growing(state, row(3, 5.0))  # crosses: warned
        state.progress.rows.append({"train_loss": 5.0})
        _warn_if_growing(state, row(4, 9.0))  # still above: not again
    warnings = [r for r in caplog.records if "training loss grew" in r.message]
    assert len(warnings) == 1 and "epoch 3" in warnings[0].message


def test_options_refuse_non_finite_numbers_before_any_work() -> None:
    from headstart.errors import ConfigError

    for field in ("lr", "dropout", "weight_decay", "warmup_epochs", "val_fraction"):
        with pytest.raises(ConfigError, match="finite"):
            fit(FitOptions(data="builtin:digits", **{field: float("nan")}))  # type: ignore[arg-type]

"""--augment auto: no augmentation for a linear probe, light when the backbone trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from headstart.choose.recommend import Measurements, decide
from headstart.config.options import FitOptions
from headstart.config.strategies import resolve_augment
from headstart.errors import ConfigError
from tests.conftest import run_cli


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [("linear", "none"), ("partial:2", "light"), ("full", "light"), ("scratch", "light")],
)
def test_auto_is_none_for_linear_and_light_when_the_backbone_trains(
    strategy: str, expected: str
) -> None:
    assert FitOptions().augment == "auto"
    assert resolve_augment("auto", strategy) == expected
    # an explicit choice is kept whatever the strategy
    assert resolve_augment("light", "linear") == "light"
    assert resolve_augment("none", strategy) == "none"


def test_a_bad_augment_is_refused_before_training(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--augment 'heavy'; valid: auto, light, none"):
        resolve_augment("heavy", "linear")
    out = tmp_path / "run"
    result = run_cli(
        "fit", "builtin:digits?classes=0-1&per_class=6", "--weights", "none",
        "--augment", "heavy", "--out", out,
    )  # fmt: skip
    assert result.code == 1 and "--augment 'heavy'" in result.stderr
    assert not (out / "headstart.json").exists()


def test_the_run_says_which_augmentation_it_trained_with(tmp_path: Path) -> None:
    out = tmp_path / "full"
    result = run_cli(
        "fit", "builtin:digits?classes=0-1&per_class=6", "--weights", "none",
        "--strategy", "full", "--epochs", "1", "--out", out, "-q",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    meta = json.loads((out / "headstart.json").read_text())
    assert meta["config"]["augment"] == "auto"
    assert meta["augmentation"] == {
        "requested": "auto",
        "applied": "light",
        "why": "--augment auto: light when the backbone trains",
    }
    report = (out / "report.md").read_text()
    assert "- training augmentation: light (--augment auto" in report


def test_recommend_says_the_augmentation_of_its_choice() -> None:
    def measured(per_class: int, leep_normalised: float) -> Measurements:
        return Measurements(
            n_items=10 * per_class,
            n_classes=10,
            min_per_class=per_class,
            median_per_class=per_class,
            trainable_params_full=1_000_000,
            examples_per_param=10 * per_class / 1e6,
            probe_pretrained=0.9,
            probe_random=0.5,
            probe_gain=0.4,
            leep=-0.5,
            leep_normalised=leep_normalised,
            bn_shift=0.01,
            bn_shift_random=0.3,
        )

    for per_class in (5, 500):
        rec = decide(measured(per_class, 0.9), ("s1", "s2", "s3", "s4"))
        assert rec.augment == resolve_augment("auto", rec.strategy)
        assert f"(augmentation: {rec.augment})" in rec.describe()
        assert rec.to_dict()["augment"] == rec.augment

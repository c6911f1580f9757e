"""The options: small frozen groups, composed per command, checked in one place."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from headstart.cli.main import build_parser
from headstart.config.fields import Augment, Precision, Select
from headstart.config.options import (
    AdaptOptions,
    CompareOptions,
    EmbedOptions,
    FitOptions,
    PretrainOptions,
    RankOptions,
    RecommendOptions,
)
from headstart.config.strategies import StrategyName
from headstart.errors import ConfigError

# Each bad value and the message it must give: the flag, and what it must be.
BAD = [
    ({"epochs": 0}, "--epochs must be at least 1 (got 0)"),
    ({"batch_size": -3}, "--batch-size must be at least 1"),
    ({"lr": 0.0}, "--lr must be positive"),
    ({"lr": math.nan}, "--lr must be a finite number"),
    ({"lr": math.inf}, "--lr must be a finite number"),
    ({"backbone_lr_mult": -1.0}, "--backbone-lr-mult must be at least 0"),
    ({"layer_decay": 0.0}, "--layer-decay must be in (0, 1]"),
    ({"layer_decay": 1.5}, "--layer-decay must be in (0, 1]"),
    ({"val_fraction": 1.0}, "--val-fraction must be in [0, 1)"),
    ({"image_size": 0}, "--image-size must be at least 1"),
    ({"image_size": -5}, "--image-size must be at least 1"),
    ({"patience": 0}, "--patience must be at least 1"),
    ({"label_smoothing": 1.0}, "--label-smoothing must be in [0, 1)"),
    ({"dropout": -0.1}, "--dropout must be in [0, 1)"),
    ({"lora_r": 0}, "--lora-r must be at least 1"),
    ({"lora_alpha": 0}, "--lora-alpha must be positive"),
    ({"processes": 0}, "--processes must be at least 1"),
    ({"checkpoint_every": -1}, "--checkpoint-every must be at least 0"),
    ({"feature_cache_views": -2}, "--feature-cache-views must be at least 0"),
    ({"max_length": 1}, "--max-length must be at least 2"),
    ({"workers": -1}, "--workers must be at least 0"),
    ({"select": "bset"}, "--select 'bset'; valid: auto, best, last"),
    ({"augment": "heavy"}, "--augment 'heavy'; valid: auto, light, none"),
    ({"precision": "fp8"}, "--precision 'fp8'; valid: auto, fp32, bf16"),
    ({"strategy": "ful"}, "unknown strategy 'ful'"),
    ({"strategy": "partial"}, "give the number of frozen stages"),
    ({"strategy": "linear", "head_epochs": 1}, "linear strategy trains only the head"),
    ({"strategy": "full", "head_epochs": 3, "epochs": 3}, "fewer than --epochs 3"),
]


@pytest.mark.parametrize(("bad", "message"), BAD, ids=[str(b) for b, _ in BAD])
def test_a_bad_value_is_refused_when_the_options_are_made(
    bad: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        FitOptions(**bad)  # type: ignore[arg-type]
    assert message in str(err.value)


def test_the_cli_refuses_a_bad_value_with_the_same_message(capsys: pytest.CaptureFixture) -> None:
    from headstart.cli import main

    assert main(["fit", "builtin:digits", "--image-size", "0"]) == 1
    assert "--image-size must be at least 1 (got 0)" in capsys.readouterr().err


def test_enum_like_values_are_parsed_once_into_types() -> None:
    o = FitOptions(strategy="partial:2", select="last", augment="none", precision="fp32")
    assert o.select is Select.LAST and o.augment is Augment.NONE
    assert o.precision is Precision.FP32
    assert isinstance(o.strategy, StrategyName)
    assert (o.strategy.kind, o.strategy.k, o.strategy.record.name) == ("partial", 2, "partial")
    # still the text they were given: compared, printed and saved as it
    assert o.select == "last" and f"{o.augment}" == "none" and o.strategy == "partial:2"
    saved = json.loads(json.dumps(dataclasses.asdict(o)))
    assert saved["select"] == "last" and saved["strategy"] == "partial:2"
    assert FitOptions(**saved) == o  # what a run dir saved reads back the same
    assert FitOptions(strategy="auto").strategy.is_auto
    with pytest.raises(ConfigError, match="not chosen yet"):
        _ = FitOptions(strategy="auto").strategy.record


def test_options_are_frozen_and_checked_again_when_changed() -> None:
    o = FitOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.epochs = 3  # type: ignore[misc]
    assert o.replace(epochs=3).epochs == 3
    with pytest.raises(ConfigError, match="--epochs must be at least 1"):
        o.replace(epochs=0)
    with pytest.raises(ConfigError, match="--epochs must be at least 1"):
        dataclasses.replace(o, epochs=0)


def _flags(command: str) -> set[str]:
    sub = build_parser()._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
    return {a.dest for a in sub._actions}


def test_each_command_takes_the_flags_of_its_own_groups() -> None:
    assert {"strategy", "val", "patience", "resume", "processes"} <= _flags("fit")
    # compare chooses the strategy, validation and epoch per fold; it does not resume
    assert not {"strategy", "val", "val_fraction", "select", "patience", "resume"} & _flags(
        "compare"
    )
    assert {"strategies", "folds", "seeds", "head_epochs", "lora_r"} <= _flags("compare")
    # recommend measures: nothing about training
    assert not {"epochs", "batch_size", "augment", "out", "lora_r"} & _flags("recommend")
    assert not {"source", "weights", "out", "resume"} & _flags("rank")
    assert not {"text_col", "lora_r", "resume", "feature_cache", "precision"} & _flags("adapt")
    assert not {"weights", "strategy", "lora_r"} & _flags("pretrain")
    assert {"data", "source", "out", "batch_size"} <= _flags("embed")


def test_a_command_hands_its_fits_what_it_fixes() -> None:
    compare = CompareOptions(data="d", epochs=4, head_epochs=1, folds=3)
    fit = compare.fit_options(strategy="full")
    assert (fit.data, fit.epochs, fit.head_epochs, fit.strategy) == ("d", 4, 1, "full")
    assert fit.select is Select.LAST and fit.val_fraction == 0.0  # scored on the fold
    pre = PretrainOptions(data="d").fit_options()
    # epochs sized from the data as fit's are (not a fixed default said "as given")
    assert (pre.strategy, pre.weights, pre.epochs) == ("scratch", "none", None)
    adapt = AdaptOptions(data="d", target="t").fit_options()
    assert adapt.select is Select.LAST and adapt.feature_cache is False
    assert RecommendOptions(data="d", lr=0.5).fit_options().lr == 0.5
    assert RankOptions(data="d", strategy="linear").fit_options().strategy == "linear"
    assert EmbedOptions(data="d").fit_options().data == "d"
    # and its own fields are checked as well
    with pytest.raises(ConfigError, match="--folds must be at least 2"):
        CompareOptions(folds=1)
    with pytest.raises(ConfigError, match="--coral-weight must be at least 0"):
        AdaptOptions(coral_weight=-1.0)

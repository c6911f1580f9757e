"""The strategy records: every registered strategy's plan follows its record, and the
modules that need a strategy's facts read them from it."""

from __future__ import annotations

import pytest

from headstart.config.strategies import (
    STRATEGIES,
    BackboneRate,
    BatchNorm,
    is_auto,
    resolve_augment,
    strategy_of,
)
from headstart.errors import ConfigError
from headstart.plan.make import Plan, make_plan

STAGES = ("stem", "block1", "block2", "block3")
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["fc"]}


def _spec(name: str) -> str:
    return f"{name}:2" if STRATEGIES.get(name).takes_k else name


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_strategys_plan_follows_its_record(name: str) -> None:
    record = STRATEGIES.get(name)
    plan = make_plan(_spec(name), STAGES, lr=1e-2, backbone_lr_mult=0.1, lora=LORA)
    frozen = record.frozen(2 if record.takes_k else None, len(STAGES))
    assert plan.frozen_stages == STAGES[:frozen]
    assert plan.trainable_stages == STAGES[frozen:]
    assert plan.reinitialise is record.reinitialise
    assert plan.bn_mode is (record.batchnorm if frozen else BatchNorm.ALL_TRAIN)
    assert (plan.lora is not None) is record.adapters
    if record.adapters or (plan.trainable_stages and record.rate is BackboneRate.BASE):
        assert plan.backbone_lr == pytest.approx(1e-2)
    elif plan.trainable_stages:
        assert plan.backbone_lr == pytest.approx(1e-3)
    else:
        assert plan.backbone_lr == 0.0
    assert resolve_augment("auto", _spec(name)) == record.augment
    # what is saved in headstart.json comes back the same
    assert Plan.from_dict(plan.to_dict()) == plan
    assert isinstance(plan.to_dict()["bn_mode"], str)


def test_the_records_say_what_the_strategies_are() -> None:
    assert strategy_of("partial:3").takes_k and strategy_of("partial:3").leading
    assert strategy_of("scratch").reinitialise
    assert strategy_of("lora").adapters
    assert not strategy_of("linear").trains_backbone
    assert strategy_of("linear").augment == "none" and strategy_of("full").augment == "light"
    assert is_auto("auto") and not is_auto("full")
    with pytest.raises(ConfigError, match="unknown strategy 'sideways'; valid: .*partial:K"):
        strategy_of("sideways")


def test_batchnorm_mode_is_a_value_and_reads_older_run_dirs() -> None:
    plan = make_plan("partial:1", STAGES)
    saved = plan.to_dict()
    assert saved["bn_mode"] == "frozen-eval"
    older = {**saved, "bn_mode": "frozen stages in eval mode"}  # run dirs before the record
    assert Plan.from_dict(older).bn_mode is BatchNorm.FROZEN_EVAL
    assert BatchNorm.parse("all stages train") is BatchNorm.ALL_TRAIN
    with pytest.raises(ConfigError, match="BatchNorm mode"):
        BatchNorm.parse("sometimes")

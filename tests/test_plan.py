"""Plans: what is frozen stays bit-identical, what trains changes, rates are as promised."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from headstart.config.options import FitOptions
from headstart.config.strategies import parse_strategy
from headstart.config.train import TrainConfig
from headstart.errors import ConfigError
from headstart.plan.apply import apply_plan, set_train_mode
from headstart.plan.make import Plan, format_plan, make_plan
from headstart.sources import build_source
from headstart.sources.target import TargetModel
from headstart.train.loop import train

STAGES = ("stem", "block1", "block2", "block3")


def _model(seed: int = 0) -> TargetModel:
    torch.manual_seed(seed)
    source = build_source("builtin:digits-cnn", weights="none")
    # Random but non-trivial BatchNorm statistics, so "unchanged" means something.
    for m in source.backbone.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return TargetModel(source.backbone, 3)


def _loader(n: int = 24) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = torch.arange(n) % 3
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=g)


def _snapshot(model: TargetModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}


def _fit(model: TargetModel, plan: Plan, epochs: int = 2) -> None:
    cfg = TrainConfig(epochs=epochs, batch_size=8, progress=False, select="last")
    train(model, plan, _loader(), None, cfg, device=torch.device("cpu"))


def test_parse_strategy_forms() -> None:
    assert parse_strategy("linear") == ("linear", None)
    assert parse_strategy("partial:2") == ("partial", 2)
    assert parse_strategy("full") == ("full", None)
    assert parse_strategy("scratch") == ("scratch", None)


@pytest.mark.parametrize("bad", ["finetune", "partial", "partial:x", "linear:2", ""])
def test_unknown_or_malformed_strategy_lists_valid(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_strategy(bad)
    msg = str(info.value)
    assert repr(bad) in msg or "partial:2" in msg
    if bad in ("finetune", "linear:2", ""):
        assert "full, linear, lora, partial:K, scratch" in msg


def test_partial_k_out_of_range_names_the_stages() -> None:
    with pytest.raises(ConfigError, match=r"K must be 1\.\.3"):
        make_plan("partial:4", STAGES)
    with pytest.raises(ConfigError, match="stem, block1"):
        make_plan("partial:0", STAGES)


def test_plans_are_exact() -> None:
    linear = make_plan("linear", STAGES, lr=1e-3)
    assert linear.frozen_stages == STAGES and linear.trainable_stages == ()
    assert linear.backbone_lr == 0.0 and linear.head_lr == 1e-3
    partial = make_plan("partial:2", STAGES, lr=1e-3)
    assert partial.frozen_stages == ("stem", "block1")
    assert partial.trainable_stages == ("block2", "block3")
    assert partial.backbone_lr == pytest.approx(1e-4)
    full = make_plan("full", STAGES, lr=1e-3, backbone_lr_mult=0.25)
    assert full.frozen_stages == () and full.backbone_lr == pytest.approx(2.5e-4)
    scratch = make_plan("scratch", STAGES, lr=1e-3)
    assert scratch.reinitialise and scratch.backbone_lr == scratch.head_lr == 1e-3
    assert Plan.from_dict(partial.to_dict()) == partial
    assert "frozen:    stem, block1" in format_plan(partial)


def test_linear_fit_leaves_backbone_and_bn_stats_bit_identical() -> None:
    model = _model()
    before = _snapshot(model)
    plan = make_plan("linear", model.backbone.stage_names, lr=1e-2)
    head_before = model.head.weight.detach().clone()
    _fit(model, plan)
    after = model.backbone.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]), f"{key} changed under linear"
    assert not torch.equal(head_before, model.head.weight), "the head did not train"
    assert all(not p.requires_grad for p in model.backbone.parameters())


def test_partial_2_freezes_stages_0_1_and_trains_the_rest() -> None:
    model = _model()
    before = _snapshot(model)
    plan = make_plan("partial:2", model.backbone.stage_names, lr=1e-2)
    _fit(model, plan)
    after = model.backbone.state_dict()
    changed = {k.split(".")[1] for k in before if not torch.equal(before[k], after[k])}
    for key in before:
        stage = model.backbone.stage_of(key.removeprefix("body."))
        if stage < 2:
            assert torch.equal(before[key], after[key]), f"{key} (stage {stage}) changed"
    assert changed == {"block2", "block3"}
    # running statistics of the trainable stages moved too
    assert not torch.equal(
        before["body.block3.1.running_mean"], after["body.block3.1.running_mean"]
    )


def test_full_has_backbone_and_head_groups_10x_apart() -> None:
    model = _model()
    plan = make_plan("full", model.backbone.stage_names, lr=1e-3)
    groups = apply_plan(model, plan)
    rates = {g["name"].removesuffix("_no_decay"): g["lr"] for g in groups}
    assert set(rates) == {"backbone", "head"}
    assert rates["head"] == pytest.approx(10 * rates["backbone"])
    grouped = {id(p) for g in groups for p in g["params"]}
    assert grouped == {id(p) for p in model.parameters()}
    optimizer = torch.optim.AdamW(groups)
    names = sorted({g["name"] for g in optimizer.param_groups})
    assert names == ["backbone", "backbone_no_decay", "head", "head_no_decay"]


def test_frozen_parameters_are_not_given_to_the_optimizer() -> None:
    model = _model()
    plan = make_plan("partial:3", model.backbone.stage_names)
    groups = apply_plan(model, plan)
    grouped = {id(p) for g in groups for p in g["params"]}
    for name, p in model.backbone.body.named_parameters():
        frozen = model.backbone.stage_of(name) < 3
        assert p.requires_grad is not frozen
        assert (id(p) in grouped) is not frozen


def test_frozen_stages_stay_in_eval_mode() -> None:
    model = _model()
    plan = make_plan("partial:2", model.backbone.stage_names)
    set_train_mode(model, plan, True)
    body = model.backbone.body
    assert not body.stem.training and not body.block1.training
    assert body.block2.training and body.block3.training and model.head.training
    set_train_mode(model, make_plan("linear", model.backbone.stage_names), True)
    assert not any(m.training for m in model.backbone.modules())
    assert model.head.training


def test_head_epochs_train_only_the_head_first_then_the_plan() -> None:
    """LP-FT: during the head-only epochs the backbone, its BatchNorm statistics included,
    stays bit-identical; afterwards the plan trains it; the rows say which rate applied."""
    model = _model()
    before = _snapshot(model)
    plan = make_plan("full", STAGES, lr=1e-2, head_epochs=2)
    seen: list[dict[str, torch.Tensor]] = []
    head_before = model.head.weight.detach().clone()
    cfg = TrainConfig(epochs=3, batch_size=8, progress=False, select="last")
    history = train(
        model,
        plan,
        _loader(),
        None,
        cfg,
        device=torch.device("cpu"),
        on_epoch=lambda row: seen.append(_snapshot(model)),
    )
    for epoch in (0, 1):  # after epochs 1 and 2: untouched, running statistics too
        assert all(torch.equal(seen[epoch][k], before[k]) for k in before)
    assert not torch.equal(model.head.weight, head_before)
    changed = [k for k in before if not torch.equal(seen[2][k], before[k])]
    assert any("running_mean" in k for k in changed) and any("weight" in k for k in changed)
    assert [r.lr_backbone for r in history.epochs[:2]] == [0.0, 0.0]
    assert history.epochs[2].lr_backbone > 0
    # the backbone is left trainable as the plan says, for whoever uses the model next
    assert all(p.requires_grad for p in model.backbone.parameters())


def test_head_epochs_restart_the_schedule_for_the_plan() -> None:
    from headstart.train.loop import _schedule

    cfg = TrainConfig(epochs=4, warmup_epochs=1.0)
    f = _schedule(cfg, 10, 1)
    head_cycle = [f(s) for s in range(10)]
    plan_cycle = [f(s) for s in range(10, 40)]
    assert head_cycle[0] < head_cycle[4] and head_cycle[-1] < 0.1  # warm up, decay to ~0
    assert plan_cycle[0] < plan_cycle[9] == pytest.approx(1.0)  # warm up again
    assert plan_cycle[-1] < 0.01


def test_head_epochs_are_checked() -> None:
    with pytest.raises(ConfigError, match="linear strategy trains only the head"):
        make_plan("linear", STAGES, head_epochs=1)
    with pytest.raises(ConfigError, match="head-epochs must be at least 0"):
        FitOptions(strategy="full", head_epochs=-1)  # ranges: checked with the options
    with pytest.raises(ConfigError, match="fewer than --epochs 2"):
        _fit(_model(), make_plan("full", STAGES, head_epochs=2), epochs=2)
    plan = make_plan("partial:1", STAGES, head_epochs=3)
    assert Plan.from_dict(plan.to_dict()) == plan
    assert "3 epochs train only the head" in format_plan(plan)

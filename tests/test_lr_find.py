"""The learning-rate range test: the rules' picks on known curves, a real sweep on a small
logistic regression, and nothing of the sweep left behind in the model, the optimizer or
the random generators."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from headstart.errors import ConfigError
from headstart.train.lr_find import (
    FALLBACK_LR,
    LrCurve,
    lr_range_test,
    plot_lr_curve,
    suggest,
    suggest_explained,
)

LOG_LRS = np.linspace(-7, 1, 100)  # a default sweep: 1e-7 to 10 in 100 steps
LRS = 10.0**LOG_LRS
MIN_LOG_LR = -1.5  # where the U curve below is lowest


def u_curve() -> np.ndarray:
    """Flat at 2.0 up to 1e-4, falling smoothly to 0.2 at ~0.03, then exploding."""
    t = np.clip((LOG_LRS + 4) / (MIN_LOG_LR + 4), 0, 1)
    falling = 2.0 - 1.8 * t * t * (3 - 2 * t)
    return np.where(LOG_LRS <= MIN_LOG_LR, falling, 0.2 + 5 * (LOG_LRS - MIN_LOG_LR) ** 2)


# --- the rules on synthetic curves -----------------------------------------------------


def test_valley_lies_in_the_falling_part_of_a_u_curve() -> None:
    lr, rule = suggest_explained(LRS, u_curve())
    assert rule == "valley"
    assert 1e-4 < lr < 10**MIN_LOG_LR  # past the plateau, below the minimum's rate
    # fastai's point: about halfway down the valley (in log-lr, -4 .. -1.5)
    assert -3.3 < math.log10(lr) < -2.2


def test_steepest_and_minimum_rules_on_a_u_curve() -> None:
    steepest = suggest(LRS, u_curve(), "steepest")
    # the smoothstep falls fastest halfway: log10 lr = -2.75
    assert -3.0 <= math.log10(steepest) <= -2.5
    minimum = suggest(LRS, u_curve(), "minimum/10")
    assert minimum == pytest.approx(LRS[np.argmin(u_curve())] / 10)
    third = suggest(LRS, u_curve(), "minimum/3")
    assert third == pytest.approx(LRS[np.argmin(u_curve())] / 3)


def test_a_flat_curve_falls_back_and_says_so() -> None:
    lr, rule = suggest_explained(LRS, np.full(100, 1.5))
    assert lr == FALLBACK_LR
    assert rule.startswith("valley (loss flat") and "fallback 0.001" in rule
    noisy = 1.5 + 0.001 * np.random.default_rng(0).standard_normal(100)
    for name in ("valley", "steepest", "minimum/10", "minimum/3"):
        lr, rule = suggest_explained(LRS, noisy, name)
        assert lr == FALLBACK_LR and "fallback" in rule and rule.startswith(name)


def test_a_curve_that_only_rises_falls_back_below_where_it_rose() -> None:
    rising = 1.0 + np.maximum(0.0, LOG_LRS + 5)  # flat until 1e-5, then up
    lr, rule = suggest_explained(LRS, rising)
    assert "never fell" in rule
    assert LRS[0] <= lr <= 1e-5


def test_nan_at_the_end_is_cut_off() -> None:
    losses = u_curve()
    losses[-20:] = np.nan
    losses[-25] = np.inf
    for name in ("valley", "steepest", "minimum/10", "minimum/3"):
        lr = suggest(LRS, losses, name)
        assert math.isfinite(lr) and LRS[0] <= lr <= LRS[-26]
    assert 1e-4 < suggest(LRS, losses) < 10**MIN_LOG_LR


def test_short_and_empty_curves_fall_back_inside_the_range_tested() -> None:
    lr, rule = suggest_explained(LRS[:4], u_curve()[:4])
    assert rule.startswith("valley (curve too short: 4 points")
    assert lr == pytest.approx(LRS[3])  # 1e-3 is beyond the rates tested: the highest
    nan_early = u_curve()
    nan_early[3] = np.nan
    assert suggest(LRS, nan_early) <= LRS[2]
    lr, rule = suggest_explained([], [])
    assert lr == FALLBACK_LR and "no finite loss" in rule


def test_minimum_over_ten_never_goes_below_the_range() -> None:
    # lowest just after the first tenth (skipped): a tenth of it was not tested
    losses = np.array([2.0] * 11 + [1.0] + [3.0] * 88)
    lr, rule = suggest_explained(LRS, losses, "minimum/10")
    assert lr == LRS[10]
    assert rule.startswith("minimum/10 (a tenth of") and "below the rates tested" in rule
    lr, rule = suggest_explained(LRS, losses, "minimum/3")
    assert lr == LRS[10] and rule.startswith("minimum/3 (a third of")


def test_suggest_rejects_what_it_cannot_read() -> None:
    with pytest.raises(ConfigError, match="unknown lr suggestion rule"):
        suggest(LRS, u_curve(), "fastest")
    with pytest.raises(ConfigError, match="100 learning rates but 99 losses"):
        suggest(LRS, u_curve()[:-1])
    with pytest.raises(ConfigError, match="must increase"):
        suggest(LRS[::-1], u_curve())


# --- a real sweep ----------------------------------------------------------------------


def blobs(n: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Two overlapping 2-D Gaussian blobs, scaled up (x20) so that plain SGD diverges
    well below a rate of 10."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (n,), generator=g)
    centres = torch.tensor([[-1.0, -1.0], [1.0, 1.0]])
    return 20 * (centres[y] + torch.randn(n, 2, generator=g)), y


def logistic() -> nn.Linear:
    model = nn.Linear(2, 2)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    return model


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def train_loss(lr: float, batches: list[tuple[torch.Tensor, torch.Tensor]], steps: int) -> float:
    model = logistic()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for step in range(steps):
        x, y = batches[step % len(batches)]
        loss = cross_entropy(model, x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x, y = blobs()
    with torch.no_grad():
        return float(cross_entropy(model, x, y))


def test_a_sweep_on_logistic_regression_finds_a_rate_that_trains() -> None:
    x, y = blobs()
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, len(x), 32)]
    model = logistic()
    curve = lr_range_test(
        model, torch.optim.SGD(model.parameters(), lr=1e-3), batches, cross_entropy
    )
    assert curve.stopped.startswith("diverged at lr")
    assert curve.steps < 100 and curve.lrs[-1] < 10.0
    assert curve.steps == len(curve.lrs) == len(curve.losses) == len(curve.raw_losses)
    assert curve.lrs[0] == pytest.approx(1e-7)
    assert np.all(np.diff(np.log(curve.lrs)) == pytest.approx(np.log(1e8) / 99))
    assert curve.losses[0] == curve.raw_losses[0] == pytest.approx(math.log(2))  # bias-corrected
    assert curve.losses[-1] > 4 * min(curve.losses)
    assert curve.rule == "valley" and curve.group == "lr"
    assert curve.lrs[0] <= curve.suggestion <= curve.lrs[-1]
    assert train_loss(curve.suggestion, batches, 300) < 0.3
    assert train_loss(1e-6, batches, 300) > 0.5


def test_the_sweep_restores_model_optimizer_and_random_state() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.Dropout(0.3), nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(
        [
            {"params": model[0].parameters(), "lr": 1e-4, "name": "backbone"},
            {
                "params": [*model[1].parameters(), *model[3].parameters()],
                "lr": 1e-3,
                "name": "head",
            },
        ],
        weight_decay=0.01,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 + 0.1 * step)
    x, y = blobs(64)
    for _ in range(3):  # the optimizer has state, the scheduler has moved the rates
        loss = cross_entropy(model, x / 20, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    model[0].eval()  # a mode the sweep must not change
    loader_rng = torch.Generator().manual_seed(7)
    before_model = {k: v.clone() for k, v in model.state_dict().items()}
    before_opt = optimizer.state_dict()
    before_opt_state = {
        i: {k: v.clone() for k, v in s.items()} for i, s in before_opt["state"].items()
    }
    before_groups = [dict(g) for g in before_opt["param_groups"]]
    group_objects = list(optimizer.param_groups)
    before_grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    rng = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())

    def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:  # draws from every generator
        i = torch.randint(0, 64, (16,), generator=loader_rng)
        noise = np.random.standard_normal() + random.random()
        return [(x[i] / 20 + float(noise) * 0.01, y[i])]

    curve = lr_range_test(model, optimizer, batches, cross_entropy, generators=[loader_rng])
    assert curve.steps > 10 and curve.group == "head"

    for k, v in model.state_dict().items():
        assert torch.equal(v, before_model[k]), k
    for p, g in zip(model.parameters(), before_grads, strict=True):
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    assert [m.training for m in model] == [False, True, True, True]
    after = optimizer.state_dict()
    assert after["param_groups"] == before_groups
    assert after["state"].keys() == before_opt_state.keys()
    for i, s in after["state"].items():
        for k, v in s.items():
            assert (
                torch.equal(v, before_opt_state[i][k]) and v.dtype == before_opt_state[i][k].dtype
            )
    assert all(a is b for a, b in zip(optimizer.param_groups, group_objects, strict=True))
    assert random.getstate() == rng[0]
    assert np.array_equal(np.random.get_state()[1], rng[1])
    assert torch.equal(torch.get_rng_state(), rng[2])
    assert torch.equal(loader_rng.get_state(), torch.Generator().manual_seed(7).get_state())
    # and training goes on as it would have: the scheduler still drives the same groups
    scheduler.step()
    assert optimizer.param_groups[1]["lr"] == pytest.approx(1e-3 * (0.5 + 0.1 * 4))


def test_state_is_restored_when_the_loss_raises() -> None:
    model = logistic()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = blobs(64)
    calls = []

    def failing(m: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) > 20:
            raise RuntimeError("out of memory")
        return cross_entropy(m, a, b)

    torch.manual_seed(5)
    state = torch.get_rng_state()
    with pytest.raises(RuntimeError, match="out of memory"):
        lr_range_test(model, optimizer, [(x, y)], failing)
    assert torch.count_nonzero(model.weight) == 0 and not optimizer.state
    assert optimizer.param_groups[0]["lr"] == 0.1
    assert torch.equal(torch.get_rng_state(), state)


def test_param_groups_keep_their_ratios_during_the_sweep() -> None:
    backbone, head = nn.Linear(2, 2), nn.Linear(2, 2)
    optimizer = torch.optim.SGD(
        [
            {"params": backbone.parameters(), "lr": 1e-4, "name": "backbone"},
            {"params": head.parameters(), "lr": 1e-3, "name": "head"},
            {"params": [], "lr": 2.5e-5, "name": "backbone@layer1"},
        ]
    )
    model = nn.Sequential(backbone, head)
    seen: list[list[float]] = []

    def loss_fn(m: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        seen.append([g["lr"] for g in optimizer.param_groups])
        return cross_entropy(m, a, b)

    x, y = blobs(32)
    curve = lr_range_test(model, optimizer, [(x / 20, y)], loss_fn, num_steps=20, diverge=None)
    assert curve.stopped == "reached end_lr 10" and curve.steps == 20
    assert curve.group == "head"
    for lr, (b, h, l1) in zip(curve.lrs, seen, strict=True):
        assert h == lr
        assert b == pytest.approx(lr / 10) and l1 == pytest.approx(lr / 40)
    assert seen[-1][1] == pytest.approx(10.0)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-4, 1e-3, 2.5e-5]


def test_without_a_head_group_the_fastest_group_is_swept() -> None:
    slow, fast = nn.Linear(2, 2), nn.Linear(2, 2)
    optimizer = torch.optim.SGD(
        [{"params": slow.parameters(), "lr": 0.01}, {"params": fast.parameters(), "lr": 0.04}]
    )
    seen: list[list[float]] = []

    def loss_fn(m: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        seen.append([g["lr"] for g in optimizer.param_groups])
        return cross_entropy(m, a, b)

    x, y = blobs(32)
    curve = lr_range_test(
        nn.Sequential(slow, fast), optimizer, [(x / 20, y)], loss_fn, num_steps=10
    )
    assert [s[1] for s in seen] == list(curve.lrs)
    assert all(s[0] == pytest.approx(s[1] / 4) for s in seen)


def test_the_batches_come_from_a_callable_a_cycle_or_a_one_shot_iterator() -> None:
    x, y = blobs(64)
    pairs = [(x[:32] / 20, y[:32]), (x[32:] / 20, y[32:])]
    model = logistic()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    kwargs = {"num_steps": 12, "diverge": None}
    assert lr_range_test(model, optimizer, pairs, cross_entropy, **kwargs).steps == 12
    assert lr_range_test(model, optimizer, lambda: iter(pairs), cross_entropy, **kwargs).steps == 12
    once = lr_range_test(model, optimizer, iter(pairs * 3), cross_entropy, **kwargs)
    assert once.steps == 6 and once.stopped == "the batches ran out after 6 steps"
    with pytest.raises(ConfigError, match="no batches"):
        lr_range_test(model, optimizer, [], cross_entropy)


def test_a_non_finite_loss_stops_the_sweep() -> None:
    x, y = blobs(32)
    model = logistic()
    calls = []

    def loss_fn(m: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        loss = cross_entropy(m, a, b)
        return loss * float("nan") if len(calls) == 30 else loss

    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    curve = lr_range_test(model, optimizer, [(x / 20, y)], loss_fn)
    assert curve.stopped.startswith("loss not finite at lr") and "(step 30)" in curve.stopped
    assert curve.steps == 30 and len(curve.lrs) == 29
    assert all(math.isfinite(v) for v in curve.losses)
    assert math.isfinite(curve.suggestion) and curve.lrs[0] <= curve.suggestion <= curve.lrs[-1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start_lr": 1e-2, "end_lr": 1e-3}, "end_lr must be above start_lr"),
        ({"start_lr": 0.0}, "start_lr must be a positive number"),
        ({"num_steps": 9}, "num_steps must be at least 10"),
        ({"smooth": 1.0}, "smooth must be in"),
        ({"diverge": 1.0}, "diverge must be above 1"),
        ({"rule": "best"}, "unknown lr suggestion rule 'best'"),
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, object], message: str) -> None:
    model = logistic()
    with pytest.raises(ConfigError, match=message):
        lr_range_test(
            model, torch.optim.SGD(model.parameters(), lr=1e-3), [], cross_entropy, **kwargs
        )


def test_every_group_at_zero_is_a_config_error() -> None:
    model = logistic()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    with pytest.raises(ConfigError, match="positive learning rate"):
        lr_range_test(model, optimizer, [blobs(8)], cross_entropy)


# --- the record and the picture ---------------------------------------------------------


def _curve() -> LrCurve:
    losses = u_curve()[:90]
    lr, rule = suggest_explained(LRS[:90], losses)
    return LrCurve(
        lrs=tuple(LRS[:90].tolist()),
        losses=tuple(losses.tolist()),
        raw_losses=tuple((losses + 0.05 * np.sin(np.arange(90))).tolist()),
        suggestion=lr,
        rule=rule,
        stopped="diverged at lr 1.2: ...",
        steps=90,
        seconds=0.25,
        group="head",
    )


def test_the_curve_goes_to_json_and_back() -> None:
    curve = _curve()
    d = json.loads(json.dumps(curve.to_dict()))
    assert isinstance(d["lrs"], list) and all(isinstance(v, float) for v in d["losses"])
    assert LrCurve.from_dict(d) == curve


def test_the_plot_is_a_png(tmp_path: Path) -> None:
    dest = plot_lr_curve(_curve(), tmp_path / "plots" / "lr_find.png", title="resnet18, full")
    assert dest == tmp_path / "plots" / "lr_find.png"
    with Image.open(dest) as image:
        assert image.format == "PNG" and image.size[0] > 300
    assert [p.name for p in dest.parent.iterdir()] == ["lr_find.png"]  # no temporary left
    empty = LrCurve((), (), (), FALLBACK_LR, "valley (no finite loss recorded: ...)", "", 1, 0.0)
    with Image.open(plot_lr_curve(empty, tmp_path / "empty.png")) as image:
        assert image.format == "PNG"

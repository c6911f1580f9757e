"""auto that checks itself: the plans left open, the race by successive halving on folds,
its budget, plans that cannot train, and when not to race."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from headstart.choose import race_trials
from headstart.choose.race import (
    DEFAULT_BUDGET,
    RACE_MAX_ITEMS,
    RaceBudget,
    race,
    report_lines,
    should_race,
)
from headstart.choose.recommend import (
    LARGE_PER_CLASS,
    Candidate,
    Measurements,
    decide,
    open_plans,
    plan_label,
    recommend_for,
)
from headstart.config.options import FitOptions
from headstart.data.images import load_data
from headstart.data.labelled import LabeledData
from headstart.errors import ConfigError
from headstart.plan.make import make_plan
from tests.conftest import tiny_fit_options

DATA = "builtin:digits?classes=0-2&per_class=12"
STAGES = ("stem", "block1", "block2", "block3")


def _c(strategy: str, mult: float = 0.1, head: int = 0) -> Candidate:
    changes = {"strategy": strategy, "backbone_lr_mult": mult, "head_epochs": head}
    return Candidate(changes, f"{strategy} for the test")


FULL, LINEAR, PARTIAL, SCRATCH = _c("full", head=1), _c("linear"), _c("partial:2"), _c("scratch")


@pytest.fixture(scope="module")
def data() -> LabeledData:
    return load_data(DATA)


@pytest.fixture
def options(tmp_path: Path) -> FitOptions:
    return tiny_fit_options(tmp_path, "race", data=DATA, epochs=2, lr=1e-3, strategy="auto")


def _fake(
    monkeypatch: pytest.MonkeyPatch,
    accuracy: dict[str, list[float]],
    *,
    seconds: float | dict[str, float] = 1.0,
    fails: tuple[str, ...] = (),
    loss: dict[str, list[float]] | None = None,
) -> list[tuple[str, int]]:
    """``train_on`` replaced: each strategy's held-out accuracy (and loss: 1.0 unless
    given) per fold and seconds per fit as given; ``fails`` raise a ConfigError.
    Returns the (strategy, fold) calls."""
    calls: list[tuple[str, int]] = []

    def train_on(options: FitOptions, train: LabeledData, held: LabeledData) -> Any:
        found = re.search(r"race fold (\d+)", held.note)
        assert found is not None and "race fold" in train.note
        assert options.select == "last" and options.val_fraction == 0 and options.patience is None
        fold = int(found.group(1)) - 1
        strategy = str(options.strategy)
        calls.append((strategy, fold))
        if strategy in fails:
            raise ConfigError(f"strategy {strategy!r}: K must be 1..3")
        secs = seconds if isinstance(seconds, float) else seconds[strategy]
        return SimpleNamespace(
            metrics={
                "val_acc": accuracy[strategy][fold],
                "val_loss": (loss or {}).get(strategy, [1.0] * 3)[fold],
            },
            timings={"load_s": 0.25 * secs, "train_s": 0.75 * secs},
        )

    monkeypatch.setattr(race_trials, "train_on", train_on)
    return calls


def _entry(result: Any, strategy: str) -> Any:
    return next(e for e in result.entries if e.changes["strategy"] == strategy)


# --- the plans the measurements leave open -------------------------------------------


def _m(per_class: int, gain: float, params: int = 1_000_000) -> Measurements:
    return Measurements(
        n_items=per_class * 5,
        n_classes=5,
        min_per_class=per_class,
        median_per_class=per_class,
        trainable_params_full=params,
        examples_per_param=per_class * 5 / params,
        probe_pretrained=0.5 + gain,
        probe_random=0.5,
        probe_gain=gain,
    )


@pytest.mark.parametrize(
    ("per_class", "gain", "labels"),
    [
        (20, 0.2, ["full (x0.1)", "full (head 2, x0.1)", "linear"]),
        (20, 0.0, ["partial:2 (x0.1)", "full (x0.1)", "scratch"]),
        (LARGE_PER_CLASS, 0.2, ["full (x0.1)", "partial:2 (x0.1)"]),
        (LARGE_PER_CLASS, -0.1, ["full (x1)", "scratch"]),
    ],
)
def test_each_case_leaves_its_rivals_open_the_recommended_first(
    per_class: int, gain: float, labels: list[str]
) -> None:
    rec = decide(_m(per_class, gain), STAGES, epochs=10)
    plans = rec.candidates()
    assert [c.label for c in plans] == labels
    assert plans[0].changes == rec.options() and rec.case in plans[0].reason
    assert open_plans(_m(per_class, gain), STAGES, epochs=10) == plans
    assert all(c.reason for c in plans)
    for c in plans:  # each one a valid fit and a valid plan for these stages
        FitOptions(data=DATA, epochs=10).replace(**c.changes)
        make_plan(
            c.changes["strategy"], STAGES, **{k: v for k, v in c.changes.items() if k != "strategy"}
        )
    # recorded, JSON-safe, and said
    record = json.loads(json.dumps(rec.to_dict()))
    assert [a["label"] for a in record["alternatives"]] == labels[1:]
    assert "also open: " + "; ".join(labels[1:]) in rec.describe()


def test_the_rivals_of_small_similar_data_on_one_stage_and_one_epoch() -> None:
    plans = decide(_m(20, 0.2), ("body",), epochs=10).candidates()
    assert [c.label for c in plans] == ["full (x0.1)", "full (head 2, x0.1)", "linear"]
    # a run of one epoch leaves no room for a head-only phase: no LP-FT rival
    plans = decide(_m(20, 0.2), ("body",), epochs=1).candidates()
    assert [c.label for c in plans] == ["full (x0.1)", "linear"]


def test_plan_labels_show_the_rate_only_where_it_applies() -> None:
    assert plan_label({"strategy": "linear", "backbone_lr_mult": 0.1, "head_epochs": 0}) == "linear"
    assert (
        plan_label({"strategy": "scratch", "backbone_lr_mult": 1.0, "head_epochs": 0}) == "scratch"
    )
    assert FULL.label == "full (head 1, x0.1)"


# --- successive halving ---------------------------------------------------------------


def test_halving_keeps_the_better_half_until_one_is_left(
    monkeypatch: pytest.MonkeyPatch, options: FitOptions, data: LabeledData
) -> None:
    calls = _fake(
        monkeypatch,
        {
            "full": [0.6, 0.0, 0.0],
            "linear": [0.9, 0.7, 0.0],
            "partial:2": [0.8, 0.9, 0.0],
            "scratch": [0.5, 0.0, 0.0],
        },
    )
    result = race(options, data, [FULL, LINEAR, PARTIAL, SCRATCH], folds=3, budget=None)
    assert result.raced and result.folds == 3
    # round 1: all four on fold 1, the better two on; round 2: those two on fold 2
    assert [(r.fold, r.trained, r.kept) for r in result.rounds] == [
        (
            1,
            [FULL.label, LINEAR.label, PARTIAL.label, SCRATCH.label],
            [LINEAR.label, PARTIAL.label],
        ),
        (2, [LINEAR.label, PARTIAL.label], [PARTIAL.label]),
    ]
    assert len(calls) == 6 and result.fits == 6
    # the mean over the folds so far decides: 0.85 beats 0.80
    assert result.winner == PARTIAL.label and result.options() == PARTIAL.changes
    assert _entry(result, "partial:2").accuracies == [0.8, 0.9]
    assert (
        "out after fold 1" in _entry(result, "full").out
        and "3rd of 4" in _entry(result, "full").out
    )
    assert "out after fold 2" in _entry(result, "linear").out
    assert result.stopped == "one plan left after 2 rounds"


def test_three_plans_keep_two_after_the_first_fold(
    monkeypatch: pytest.MonkeyPatch, options: FitOptions, data: LabeledData
) -> None:
    _fake(monkeypatch, {"full": [0.7, 0.9], "linear": [0.8, 0.6], "scratch": [0.3, 1.0]})
    result = race(options, data, [FULL, LINEAR, SCRATCH], folds=3, budget=None)
    # kept in the order of their means
    assert [r.kept for r in result.rounds] == [[LINEAR.label, FULL.label], [FULL.label]]
    assert result.winner == FULL.label and "3rd of 3" in _entry(result, "scratch").out


def test_the_folds_running_out_leave_the_best_mean(
    monkeypatch: pytest.MonkeyPatch, options: FitOptions, data: LabeledData
) -> None:
    _fake(
        monkeypatch,
        {
            "full": [0.5, 0.9],
            "linear": [0.6, 0.9],
            "partial:1": [0.65, 0.8],
            "partial:2": [0.7, 0.6],
            "scratch": [0.9, 0.4],
        },
    )
    plans = [FULL, LINEAR, _c("partial:1"), PARTIAL, SCRATCH]
    # two folds for five plans: 5 -> 3 -> 2, and the folds are used up
    result = race(options, data, plans, folds=2, budget=None)
    assert [len(r.kept) for r in result.rounds] == [3, 2]
    # mean 0.725 against scratch's 0.65 (0.69 with half a held-out item for a tie)
    assert result.winner == "partial:1 (x0.1)"
    assert result.stopped.startswith("the folds ran out with 2 plans left")
    assert "2nd of 2" not in _entry(result, "scratch").out  # still in: no "out" to say
    # two plans are one round: 2 -> 1
    _fake(monkeypatch, {"full": [0.5, 0.5, 0.5], "linear": [0.5, 0.5, 0.5]})
    result = race(options, data, [FULL, LINEAR], folds=3, budget=None)
    assert len(result.rounds) == 1 and result.winner == FULL.label


def test_ties_go_to_the_recommended_plan(
    monkeypatch: pytest.MonkeyPatch, options: FitOptions, data: LabeledData
) -> None:
    _fake(monkeypatch, {s: [0.75] * 3 for s in ("full", "linear", "partial:2")})
    for order in ([FULL, LINEAR, PARTIAL], [PARTIAL, LINEAR, FULL], [LINEAR, FULL, PARTIAL]):
        result = race(options, data, order, folds=3, budget=None)
        assert result.winner == order[0].label
        assert result.rounds[0].kept == [order[0].label, order[1].label]


def test_a_tie_in_accuracy_goes_to_the_lower_held_out_loss(
    monkeypatch: pytest.MonkeyPatch, options: FitOptions, data: LabeledData
) -> None:
    """A third of a small training set moves accuracy in steps of several points, so two
    plans often tie; the loss, which every held-out item moves a little, decides."""
    accuracy = {s: [0.75] * 3 for s in ("full", "linear", "partial:2")}
    loss = {"full": [0.9] * 3, "linear": [0.5] * 3, "partial:2": [0.7] * 3}
    for order in ([FULL, LINEAR, PARTIAL], [PARTIAL, FULL, LINEAR]):
        _fake(monkeypatch, accuracy, loss=loss)
        result = race(options, data, order, folds=3, budget=None)
        assert result.winner == LINEAR.label
        assert result.rounds[0].kept == [LINEAR.label, PARTIAL.label]
        assert _entry(result, "linear").losses == [0.5, 0.5]
    # accuracy still comes first
    _fake(monkeypatch, {**accuracy, "full": [0.8] * 3}, loss=loss)
    assert race(options, data, [LINEAR, FULL], folds=3, budget=None).winner == FULL.label


def test_a_tie_goes_to_scratch_where_it_races(
    monkeypatch: pytest.MonkeyPatch, options: FitOptions, data: LabeledData
) -> None:
    """Two means within half a held-out item (12 items a fold here: 1/24) are no evidence
    that the source helps: scratch, which does not use it, wins them, whatever the loss
    says; the record says where the rule decided."""
    accuracy = {"partial:2": [0.9] * 3, "full": [0.75] * 3, "scratch": [0.75 - 0.03] * 3}
    loss = {"partial:2": [0.5] * 3, "full": [0.2] * 3, "scratch": [0.9] * 3}
    _fake(monkeypatch, accuracy, loss=loss)
    result = race(options, data, [PARTIAL, _c("full"), SCRATCH], folds=3, budget=None)
    assert result.rounds[0].kept == [PARTIAL.label, SCRATCH.label]
    assert any("scratch 0.720 kept over full (x0.1) 0.750 on a tie" in n for n in result.notes), (
        result.notes
    )
    assert "kept over full (x0.1) 0.750 on a tie" in result.describe()
    assert _entry(result, "full").out.endswith("(a tie with scratch, which wins ties)")
    # the folds run out with two plans left: the tie names the winner, and says so
    ran_out = {
        "full": [0.5, 0.9],
        "linear": [0.6, 0.9],
        "partial:1": [0.65, 0.8],
        "partial:2": [0.7, 0.6],
        "scratch": [0.9, 0.5],
    }
    _fake(monkeypatch, ran_out)
    plans = [FULL, LINEAR, _c("partial:1"), PARTIAL, SCRATCH]
    result = race(options, data, plans, folds=2, budget=None)
    assert result.stopped.startswith("the folds ran out with 2 plans left")
    assert result.winner == "scratch"  # 0.70 against partial:1's 0.725: within 1/24
    assert any(n.startswith("at the end: scratch 0.700 kept over") for n in result.notes)
    # a whole held-out item behind is not a tie: the source's plan stays
    _fake(monkeypatch, {**accuracy, "scratch": [0.75 - 1 / 12] * 3}, loss=loss)
    result = race(options, data, [PARTIAL, _c("full"), SCRATCH], folds=3, budget=None)
    assert result.rounds[0].kept == [PARTIAL.label, "full (x0.1)"] and not result.notes
    # nor does the rule touch ties between plans that both use the source
    _fake(monkeypatch, {"partial:2": [0.75] * 3, "full": [0.75] * 3}, loss=loss)
    assert race(options, data, [PARTIAL, _c("full")], folds=3, budget=None).winner == (
        "full (x0.1)"  # the lower loss
    )


def test_the_result_does_not_depend_on_the_order_of_the_plans(
    monkeypatch: pytest.MonkeyPatch, options: FitOptions, data: LabeledData
) -> None:
    accuracy = {
        "full": [0.70, 0.80, 0.90],
        "linear": [0.75, 0.70, 0.60],
        "partial:2": [0.72, 0.85, 0.95],
        "scratch": [0.40, 0.90, 0.90],
    }
    seen = set()
    for order in itertools.permutations([FULL, LINEAR, PARTIAL, SCRATCH]):
        _fake(monkeypatch, accuracy)
        result = race(options, data, list(order), folds=3, budget=None)
        seen.add(
            (
                result.winner,
                tuple(sorted((e.label, tuple(e.accuracies)) for e in result.entries)),
                tuple(frozenset(r.kept) for r in result.rounds),
            )
        )
    assert len(seen) == 1 and next(iter(seen))[0] == PARTIAL.label


# --- the budget --------------------------------------------------------------------


def test_a_budget_in_seconds_stops_the_first_round_and_keeps_the_leader(
    monkeypatch: pytest.MonkeyPatch, options: FitOptions, data: LabeledData
) -> None:
    calls = _fake(
        monkeypatch, {"full": [0.6] * 3, "linear": [0.7] * 3, "scratch": [0.99] * 3}, seconds=10.0
    )
    result = race(options, data, [FULL, LINEAR, SCRATCH], folds=3, budget=25)
    # two fits (20s); a third would reach 30s
    assert calls == [("full", 0), ("linear", 0)]
    assert result.winner == LINEAR.label and result.budget_s == 25
    assert result.stopped.startswith("budget") and "25.0s" in result.stopped
    assert _entry(result, "scratch").out.startswith("not trained: budget")
    assert result.rounds[0].kept == [LINEAR.label]


def test_a_budget_in_fits_stops_before_the_round_it_cannot_afford(
    monkeypatch: pytest.MonkeyPatch, options: FitOptions, data: LabeledData
) -> None:
    accuracy = {"full": [0.8, 0.1, 0.1], "linear": [0.7, 0.9, 0.9], "scratch": [0.1] * 3}
    seconds = {"full": 10.0, "linear": 2.0, "scratch": 8.0}
    calls = _fake(monkeypatch, accuracy, seconds=seconds)
    # one fit: the slowest of round 1 (10s); round 1 costs 20s, round 2 would reach 32s
    result = race(options, data, [FULL, LINEAR, SCRATCH], folds=3, budget="3x")
    assert len(calls) == 3 and result.fit_s == 10.0 and result.budget_s == 30.0
    assert result.winner == FULL.label  # the leader after fold 1
    assert "fold 2" in result.stopped and "3x one fit" in result.stopped
    # the default budget (5x) affords the whole race of three: linear wins on two folds
    calls = _fake(monkeypatch, accuracy, seconds=seconds)
    result = race(options, data, [FULL, LINEAR, SCRATCH], folds=3, budget=DEFAULT_BUDGET)
    assert len(calls) == 5 and result.winner == LINEAR.label
    assert result.stopped == "one plan left after 2 rounds"


def test_budget_texts() -> None:
    assert RaceBudget.parse("5x") == RaceBudget(fits=5.0)
    assert RaceBudget.parse("2.5x").limit_s(4.0) == 10.0
    assert RaceBudget.parse("600") == RaceBudget.parse("600s") == RaceBudget.parse("10m")
    assert RaceBudget.parse("1h").seconds == 3600 and RaceBudget.parse(90.0).seconds == 90
    assert RaceBudget.parse("none") == RaceBudget.parse(None) == RaceBudget()
    assert RaceBudget().limit_s(10.0) is None and RaceBudget(fits=5).limit_s(None) is None
    for bad in ("0x", "fast", "-3", "5y", 0):
        with pytest.raises(ConfigError, match="budget"):
            RaceBudget.parse(bad)


# --- plans that cannot train, folds, when to race -----------------------------------


def test_a_plan_that_cannot_train_leaves_the_race_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, options: FitOptions, data: LabeledData
) -> None:
    bad = _c("partial:9")
    calls = _fake(
        monkeypatch,
        {"full": [0.6, 0.6], "linear": [0.8, 0.8], "partial:9": [1.0, 1.0]},
        fails=("partial:9",),
    )
    result = race(options, data, [bad, FULL, LINEAR], folds=2, budget=None)
    entry = _entry(result, "partial:9")
    assert "K must be" in entry.failed and entry.out.startswith("cannot train")
    assert not entry.accuracies and ("partial:9", 1) not in calls
    assert result.winner == LINEAR.label
    assert "cannot train" in result.describe()
    # nothing trains at all: the fit could not either
    _fake(monkeypatch, {}, fails=("partial:9", "full"))
    with pytest.raises(ConfigError, match="no plan could train"):
        race(options, data, [bad, FULL], folds=2, budget=None)


def test_too_few_items_per_class_mean_fewer_folds_or_no_race(
    monkeypatch: pytest.MonkeyPatch, options: FitOptions
) -> None:
    _fake(monkeypatch, {"full": [0.5, 0.5], "linear": [0.6, 0.6]})
    two = load_data("builtin:digits?classes=0-2&per_class=2")
    result = race(options, two, [FULL, LINEAR], folds=3, budget=None)
    assert result.raced and result.folds == 2 and result.folds_asked == 3
    assert "2 folds instead of 3" in result.notes[0]
    calls = _fake(monkeypatch, {})
    one = load_data("builtin:digits?classes=0-2&per_class=1")
    result = race(options, one, [FULL, LINEAR], folds=3, budget=None)
    assert not result.raced and not calls and result.winner == FULL.label
    assert result.stopped.startswith("skipped") and "at least 2" in result.stopped
    result = race(options, one, [LINEAR], folds=3)
    assert not result.raced and result.options() == LINEAR.changes


def test_small_data_race_large_data_are_decided_from_the_measurements() -> None:
    assert should_race(RACE_MAX_ITEMS, 10, n_candidates=3)[0]
    yes, why = should_race(300, 5, n_candidates=3)
    assert yes and "small data" in why
    no, why = should_race(RACE_MAX_ITEMS + 1, 10, n_candidates=3)
    assert not no and "measurements alone" in why
    assert not should_race(100, 5, n_candidates=1)[0]
    assert not should_race(100, 5, n_candidates=3, min_per_class=1)[0]
    # a large case still has a rival, but with this much data it is not raced
    rec = decide(_m(LARGE_PER_CLASS * 4, 0.2), STAGES)
    assert len(rec.candidates()) == 2
    assert not should_race(rec.measurements.n_items * 2, 5, n_candidates=2)[0]


def test_the_record_is_json_and_reads_as_lines(
    monkeypatch: pytest.MonkeyPatch, options: FitOptions, data: LabeledData
) -> None:
    _fake(monkeypatch, {"full": [0.7, 0.8, 0.9], "linear": [0.75, 0.6, 0.6]})
    result = race(options, data, [FULL, LINEAR], folds=3)
    record = json.loads(json.dumps(result.to_dict()))
    assert record["winner"] == LINEAR.label and record["changes"] == LINEAR.changes
    assert record["candidates"][0]["accuracies"] == [0.7] and record["fits"] == 2
    assert record["budget"] == "5x one fit" and record["budget_s"] == 5.0
    text = result.describe()
    assert "2 plans on 3 stratified folds of 36 training items" in text
    assert f"{LINEAR.label}: folds 0.750, mean 0.750" in text and "the winner" in text
    lines = report_lines(record)
    assert lines[0].startswith("## ") and any(line.startswith("- stopped:") for line in lines)
    assert report_lines(None) == []
    skipped = report_lines({"raced": False, "why": "large data (5000 training items)"})
    assert skipped[1] == "race: none, large data (5000 training items)"


# --- a real race ------------------------------------------------------------------


def test_a_real_tiny_race_of_the_open_plans(options: FitOptions, data: LabeledData) -> None:
    rec = recommend_for(options, data)
    plans = rec.candidates()
    assert len(plans) == 3
    # a plan this backbone cannot take (digits-cnn has 4 stages)
    bad = Candidate({"strategy": "partial:9", "backbone_lr_mult": 0.1, "head_epochs": 0}, "test")
    result = race(options, data, [*plans, bad], folds=2, budget=None)
    assert result.raced and result.folds == 2
    assert "K must be" in _entry(result, "partial:9").failed
    trained = [e for e in result.entries if e.accuracies]
    assert len(trained) == 3 and all(0 <= a <= 1 for e in trained for a in e.accuracies)
    assert len(result.rounds) == 2 and len(result.rounds[1].trained) == 2
    assert result.winner in [p.label for p in plans]
    assert all(s > 0 for e in trained for s in e.seconds) and result.total_s > 0
    json.dumps(result.to_dict())
    # the winner's changes make the fit's options
    assert options.replace(**result.options()).strategy == result.changes["strategy"]


@pytest.mark.slow
def test_two_workers_race_to_the_same_numbers(
    options: FitOptions, data: LabeledData, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fit --trials-in-parallel 2: each round's fits are trials in two worker processes;
    the folds, fits and numbers are those of the race run one fit after another (at the
    same threads per fit: another thread count adds up in another order)."""
    pytest.importorskip("optuna")
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the workers' threads (choose.trials)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plans = recommend_for(options, data).candidates()
        bad = Candidate({"strategy": "partial:9", "backbone_lr_mult": 0.1}, "cannot train")
        one = race(options, data, [*plans, bad], folds=2, budget=None)
        two = race(options.replace(trials_in_parallel=2), data, [*plans, bad], folds=2, budget=None)
    finally:
        torch.set_num_threads(threads)
    assert two.winner == one.winner
    for a, b in zip(one.entries, two.entries, strict=True):
        assert (a.label, a.accuracies, a.losses) == (b.label, b.accuracies, b.losses)
        assert a.failed == b.failed and (a.failed == "") == (a.label != "partial:9 (x0.1)")
    assert [r.kept for r in two.rounds] == [r.kept for r in one.rounds]

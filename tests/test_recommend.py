"""recommend: each measure moves the right way on constructed cases; the four cases."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from headstart.api.fit import fit
from headstart.choose.recommend import (
    LARGE_EXAMPLES_PER_PARAM,
    LARGE_MIN_PER_CLASS,
    LARGE_PER_CLASS,
    Measurements,
    decide,
    head_epochs_for,
    measure,
    recommend,
)
from headstart.config.options import FitOptions, PretrainOptions, RecommendOptions
from headstart.data.images import load_data
from headstart.plan.make import make_plan
from headstart.sources import build_source
from headstart.train.budget import size_budget
from tests.conftest import run_cli

TARGET = "builtin:digits?classes=0-4&per_class=20"
STAGES = ("stem", "block1", "block2", "block3")


@pytest.fixture(scope="module")
def digits_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits-cnn pre-trained on digits 0-4: a *similar* source for digits 0-4."""
    from headstart.api.fit import pretrain

    out = tmp_path_factory.mktemp("rec") / "pre"
    return pretrain(
        PretrainOptions(data="builtin:digits?classes=0-4", out=str(out), epochs=4, progress=False)
    ).run_dir


def _measure(source_spec: str, data: object) -> Measurements:
    source = build_source(source_spec)
    torch.manual_seed(0)
    random_source = build_source(source.arch, weights="none")
    return measure(source, random_source, data, seed=0)  # type: ignore[arg-type]


def test_probe_gain_is_high_for_a_matching_source_and_zero_for_random(
    digits_source: Path,
) -> None:
    data = load_data(TARGET)
    matched = _measure(f"file:{digits_source}", data)
    assert matched.probe_gain > 0.02
    torch.manual_seed(1)
    random_as_source = build_source("builtin:digits-cnn", weights="none")
    torch.manual_seed(0)
    control = build_source("builtin:digits-cnn", weights="none")
    unmatched = measure(random_as_source, control, data, seed=0)
    assert abs(unmatched.probe_gain) < matched.probe_gain
    assert unmatched.leep is None and any("LEEP" in n for n in unmatched.notes)


def test_leep_drops_when_labels_stop_matching_the_source(digits_source: Path) -> None:
    data = load_data(TARGET)
    aligned = _measure(f"file:{digits_source}", data)
    rng = np.random.default_rng(0)
    shuffled = replace(data, targets=rng.permutation(data.targets))
    scrambled = _measure(f"file:{digits_source}", shuffled)
    assert aligned.leep is not None and scrambled.leep is not None
    assert aligned.leep > scrambled.leep + 0.2
    assert aligned.leep_normalised is not None and scrambled.leep_normalised is not None
    assert aligned.leep_normalised > 0.5 > scrambled.leep_normalised


def test_bn_shift_grows_when_the_inputs_move_away_from_the_source(digits_source: Path) -> None:
    data = load_data(TARGET)
    inverted = replace(data, items=[255 - np.asarray(x) for x in data.items])
    near = _measure(f"file:{digits_source}", data)
    far = _measure(f"file:{digits_source}", inverted)
    assert near.bn_shift is not None and far.bn_shift is not None
    assert far.bn_shift > 2 * near.bn_shift


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
    ("per_class", "gain", "case", "strategy", "mult", "head"),
    [
        (20, 0.2, "small + similar", "full", 0.1, 0),
        (20, 0.0, "small + dissimilar", "partial:2", 0.1, 0),
        (LARGE_PER_CLASS, 0.2, "large + similar", "full", 0.1, 0),
        (LARGE_PER_CLASS, -0.1, "large + dissimilar", "full", 1.0, 0),
    ],
)
def test_the_four_cases(
    per_class: int, gain: float, case: str, strategy: str, mult: float, head: int
) -> None:
    rec = decide(_m(per_class, gain), STAGES, epochs=10)
    assert (rec.case, rec.strategy, rec.backbone_lr_mult, rec.head_epochs) == (
        case,
        strategy,
        mult,
        head,
    )
    assert len(rec.reasons) == 3 and all(rec.reasons)
    assert case.split(" + ")[0] in rec.reasons[0] and case.split(" + ")[1] in rec.reasons[1]
    # what it says is what it sets: the command line in the description, the fit options
    assert rec.options() == {"strategy": strategy, "backbone_lr_mult": mult, "head_epochs": head}
    assert (f"--head-epochs {head}" in rec.describe()) == bool(head)
    plan = make_plan(strategy, STAGES, backbone_lr_mult=mult, head_epochs=head)
    assert plan.head_epochs == head


def test_head_epochs_are_a_fifth_of_the_run_and_never_all_of_it() -> None:
    assert [head_epochs_for(e) for e in (1, 2, 3, 5, 10, 20, 40)] == [0, 1, 1, 1, 2, 4, 8]


def test_large_is_relative_to_the_network_too() -> None:
    """The same 60 examples per class are large for a 100k-parameter network, not for 10M."""
    small_net = _m(60, 0.2, params=100_000)  # 3e-3 examples per parameter
    big_net = _m(60, 0.2, params=10_000_000)  # 3e-5
    assert small_net.examples_per_param >= LARGE_EXAMPLES_PER_PARAM > big_net.examples_per_param
    assert decide(small_net, STAGES).case == "large + similar"
    assert "per trainable parameter" in decide(small_net, STAGES).reasons[0]
    assert decide(big_net, STAGES).case == "small + similar"
    # enough per parameter, but a class with a handful of examples keeps the data small
    few = replace(small_net, min_per_class=LARGE_MIN_PER_CLASS - 1)
    assert decide(few, STAGES).case == "small + similar"


def test_recommend_cli_and_fit_auto_save_the_reasoning(digits_source: Path, tmp_path: Path) -> None:
    result = run_cli("recommend", TARGET, "--source", f"file:{digits_source}", "--json")
    assert result.code == 0, result.stderr
    rec = result.json()
    assert rec["case"] == "small + similar" and rec["strategy"] == "full"
    # fine-tuning from the start, the backbone slowly; LP-FT with a fifth of the epochs
    # the fit's budget gives 100 items (batch 8: 24 epochs) is a rival
    assert size_budget(100, 0).epochs == 24
    assert rec["head_epochs"] == 0 and rec["backbone_lr_mult"] == 0.1
    assert [a["label"] for a in rec["alternatives"]] == ["full (head 5, x0.1)", "linear"]
    assert rec["measurements"]["leep"] is not None
    fitted = fit(
        FitOptions(
            data=TARGET,
            source=f"file:{digits_source}",
            strategy="auto",
            epochs=2,
            out=str(tmp_path / "auto"),
            progress=False,
        )
    )
    import json

    meta = json.loads((tmp_path / "auto" / "headstart.json").read_text())
    rec_saved = meta["recommendation"]
    assert rec_saved["reasons"] and rec_saved["strategy"] == "full"
    # small data: the plans the measurements leave open were raced on folds, and the
    # fit trained the winner
    race = rec_saved["race"]
    assert race["raced"] and race["candidates"] and race["stopped"]
    assert fitted.plan.strategy == meta["plan"]["strategy"] == race["changes"]["strategy"]
    # a head-only phase is a solved head (LP-FT): no head-only epochs are left to run
    assert fitted.plan.head_epochs == 0
    report = (tmp_path / "auto" / "report.md").read_text()
    assert "Why this plan" in report and "race" in report
    assert recommend(RecommendOptions(data=TARGET, source=f"file:{digits_source}")).strategy

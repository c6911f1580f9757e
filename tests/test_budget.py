"""The defaults sized from the data: the step budget at its edges, --lr auto and the
solved head end to end, and `headstart lr-find`."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegressionCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from headstart.train.budget import (
    MAX_BATCH,
    MAX_EPOCHS,
    MIN_BATCH,
    MIN_EPOCHS,
    MIN_VAL_TO_SELECT,
    TARGET_STEPS,
    size_budget,
    steps_per_epoch,
)
from tests.conftest import run_cli, write_digit_pngs


def test_small_data_gets_small_batches_and_enough_steps() -> None:
    b = size_budget(80, 20)
    assert (b.batch_size, b.epochs, b.steps) == (8, 30, 300)
    assert b.select == "last" and any("too few" in w for w in b.why)


def test_the_budget_at_its_edges() -> None:
    tiny = size_budget(5, 0)  # fewer items than the smallest batch: one batch of all
    assert tiny.batch_size == 5 and tiny.epochs == MAX_EPOCHS and tiny.steps == MAX_EPOCHS
    large = size_budget(100_000, 20_000)  # every item seen MIN_EPOCHS times
    assert large.batch_size == MAX_BATCH and large.epochs == MIN_EPOCHS
    assert large.select == "best"
    for n in (16, 81, 160, 319, 320, 641, 5000):
        b = size_budget(n, 0)
        assert MIN_BATCH <= b.batch_size <= MAX_BATCH or b.batch_size == n
        assert b.steps >= TARGET_STEPS or b.epochs in (MIN_EPOCHS, MAX_EPOCHS)
        assert b.steps == b.epochs * steps_per_epoch(n, b.batch_size)
    # the selection flips where the validation split is large enough to choose by
    assert size_budget(1000, MIN_VAL_TO_SELECT - 1).select == "last"
    assert size_budget(1000, MIN_VAL_TO_SELECT).select == "best"


def test_what_is_given_is_kept_and_said() -> None:
    b = size_budget(80, 20, batch_size=32, epochs=3, select="best")
    assert (b.batch_size, b.epochs, b.select, b.steps) == (32, 3, "best", 9)
    assert b.why == ("batch 32 as given", "3 epochs as given", "the best epoch as given")
    assert size_budget(80, 20, patience=2).select == "best"  # early stopping needs it
    assert size_budget(80, 20, multiple_of=3).batch_size % 3 == 0  # processes share it


@pytest.mark.parametrize(
    ("n", "bs", "want"), [(9, 8, 1), (10, 8, 2), (16, 8, 2), (17, 8, 2), (18, 8, 3)]
)
def test_steps_per_epoch_counts_as_the_loader_batches(n: int, bs: int, want: int) -> None:
    assert steps_per_epoch(n, bs) == want  # a last batch of one item is dropped


def test_fit_with_no_flags_sizes_its_budget_and_finds_its_rate(
    tmp_path: Path, digits_folder: Path
) -> None:
    out = tmp_path / "run"
    r = run_cli("fit", digits_folder, "--strategy", "full", "--out", out, "--json")
    assert r.code == 0, r.stderr
    meta = json.loads((out / "headstart.json").read_text())
    budget, found = meta["budget"], meta["lr_find"]
    assert budget["steps"] >= TARGET_STEPS and budget["why"]
    assert meta["config"]["lr"] is None  # asked: auto; used: the plan's
    assert meta["plan"]["head_lr"] == pytest.approx(found["lr"])
    assert found["rule"].startswith("minimum/3")  # images (texts: a tenth, test_text)
    assert (out / "lr_find.png").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "lr_find.png" in report and "budget:" in report
    assert "learning rate" in r.stderr and "budget:" in r.stderr  # the plan says why


def test_fit_with_no_flag_at_all_measures_races_and_trains_the_winner(
    tmp_path: Path, digits_folder: Path
) -> None:
    out = tmp_path / "auto"
    r = run_cli("fit", digits_folder, "--out", out)
    assert r.code == 0, r.stderr
    meta = json.loads((out / "headstart.json").read_text())
    rec = meta["recommendation"]
    assert rec is not None and rec["case"]  # auto measured the data (the default)
    race = rec["race"]
    assert race["raced"] and len(race["candidates"]) >= 2
    assert meta["plan"]["strategy"] == race["changes"]["strategy"]
    # what the winner needed was sized from the data: a rate, or a solved head
    assert meta["lr_find"] is not None or meta["head_solver"] is not None


def test_linear_solves_its_head_and_needs_no_rate(tmp_path: Path, digits_folder: Path) -> None:
    out = tmp_path / "lin"
    r = run_cli("fit", digits_folder, "--strategy", "linear", "--out", out)
    assert r.code == 0, r.stderr
    meta = json.loads((out / "headstart.json").read_text())
    assert meta["plan"]["strategy"] == "linear" and meta["lr_find"] is None
    solver = meta["head_solver"]
    assert solver["c"] in solver["cs"] and solver["converged"]
    assert meta["metrics"]["epochs_run"] == 1
    # the saved model is the usual one: evaluate reads it as any run
    r = run_cli("evaluate", out, digits_folder, "--json")
    assert r.code == 0 and r.json()["accuracy"] > 0.5


def test_linears_c_is_chosen_on_logistic_regression_cvs_folds_of_embeds_features(
    tmp_path: Path,
) -> None:
    # LogisticRegressionCV with its defaults, on the folder's features in embed's order:
    # the same held-out accuracy per C (its unshuffled folds; on these 36 images shuffled
    # ones choose 166.8 instead of 0.046 by its rule), and the C the solver picks from
    # those features: the best of them, and of the C tied on it, the lowest log-loss
    from headstart.train.head_solver import solve_head

    folder = write_digit_pngs(tmp_path / "d", digits=(3, 5, 8), per_class=12)
    r = run_cli("fit", folder, "--strategy", "linear", "--out", tmp_path / "lin")
    assert r.code == 0, r.stderr
    solver = json.loads((tmp_path / "lin" / "headstart.json").read_text())["head_solver"]
    r = run_cli("embed", folder, "--out", tmp_path / "f.npz")
    assert r.code == 0, r.stderr
    with np.load(tmp_path / "f.npz") as f:
        x, y = f["features"], f["labels"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its FutureWarning about the scoring default
        lrcv = LogisticRegressionCV(Cs=10, max_iter=5000)
        ref = make_pipeline(StandardScaler(), lrcv).fit(x, y)[-1]
    ref_accuracy = ref.scores_[0].mean(axis=0).ravel()
    # (a held-out image of a fold of 7 moves a C's mean by 0.029)
    np.testing.assert_allclose(solver["cv_accuracy"], ref_accuracy, atol=0.03)
    assert solver["c"] == solve_head(x, y, 3).c
    best = solver["cs"].index(solver["c"])
    tied = [i for i, a in enumerate(solver["cv_accuracy"]) if abs(a - max(ref_accuracy)) < 0.03]
    assert best in tied and solver["cv_log_loss"][best] == min(
        solver["cv_log_loss"][i] for i in tied
    )


def test_lr_find_plots_the_rate_fit_would_take(tmp_path: Path, digits_folder: Path) -> None:
    r = run_cli("lr-find", digits_folder, "--out", tmp_path / "lrf", "--seed", "3", "--json")
    assert r.code == 0, r.stderr
    s = r.json()
    assert (tmp_path / "lrf" / "lr_find.png").stat().st_size > 0
    saved = json.loads((tmp_path / "lrf" / "lr_find.json").read_text())
    assert saved["lr"] == s["lr"] > 0 and s["strategy"] == "full" and not s["solved_by_fit"]
    said = [line for line in r.stderr.splitlines() if "range test" in line]
    assert len(said) == 1 and f"{s['lr']:.3g}" in said[0], r.stderr  # once (#18)
    fit = run_cli("fit", digits_folder, "--strategy", "full", "--seed", "3", "--epochs", "1",
                  "--out", tmp_path / "fit")  # fmt: skip
    assert fit.code == 0, fit.stderr
    meta = json.loads((tmp_path / "fit" / "headstart.json").read_text())
    # a sweep sized by --epochs 1 is shorter than lr-find's (auto epochs), so compare the
    # rate lr-find gives with the same budget
    same = run_cli("lr-find", digits_folder, "--seed", "3", "--epochs", "1",
                   "--out", tmp_path / "lrf1", "--json")  # fmt: skip
    assert same.json()["lr"] == pytest.approx(meta["lr_find"]["lr"])


def test_a_sweep_of_noise_does_not_leave_the_head_at_the_sweeps_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Batch-8 noise whose lowest point came first: the rule's "never fell" cap is the
    start of the sweep (clip-art: 4e-6, a head that never learned); the fit falls back."""
    import numpy as np

    from headstart.train.auto import safe_rate
    from headstart.train.lr_find import LrCurve
    from headstart.train.lr_rules import suggest_explained

    lrs = tuple(float(x) for x in np.geomspace(1e-6, 0.3, 30))
    noise = [1.61 + 0.04 * np.sin(i) for i in range(30)]
    losses = tuple(float(v) for v in [*noise[:3], 1.5, *noise[4:]])  # lowest: first kept
    rate, rule = suggest_explained(lrs, losses, "minimum/10")
    assert "never fell" in rule and rate < 1e-5  # the rule's cap: near the start
    curve = LrCurve(lrs, losses, losses, rate, rule, "reached end_lr", 30, 0.1)
    with caplog.at_level("WARNING", logger="headstart.train.auto"):
        safe = safe_rate(curve)
    assert safe.suggestion == pytest.approx(1e-3) and "noise-safe fallback" in safe.rule
    assert any("never clearly fell" in r.message for r in caplog.records)
    # a sweep that diverged at a low rate is not pushed above a decade below it
    short = LrCurve(lrs[:5], losses[:5], losses[:5], rate, rule, "diverged", 5, 0.1)
    assert safe_rate(short) is short  # lrs[4] / 10 is below the rule's own pick
    # a curve the rule read normally is left alone
    fine = LrCurve(lrs, losses, losses, 5e-3, "minimum/10", "reached end_lr", 30, 0.1)
    assert safe_rate(fine) is fine


def test_random_weights_train_at_adamws_rate_not_the_curves(
    tmp_path: Path, digits_folder: Path
) -> None:
    """scratch with --lr auto: no range test (its curve misleads on random weights), the
    rate and why in headstart.json and the report; lr-find still plots the curve and says
    that fit does not read it."""
    from headstart.train.auto import RANDOM_WEIGHTS_LR

    out = tmp_path / "scratch"
    r = run_cli("fit", digits_folder, "--strategy", "scratch", "--epochs", "2", "--out", out)
    assert r.code == 0, r.stderr
    meta = json.loads((out / "headstart.json").read_text())
    found = meta["lr_find"]
    assert found["lr"] == RANDOM_WEIGHTS_LR == meta["plan"]["head_lr"]
    assert "random weights" in found["rule"] and found["plot"] is None
    assert not (out / "lr_find.png").exists()
    assert (
        f"learning rate: {RANDOM_WEIGHTS_LR:.3g} (random weights" in (out / "report.md").read_text()
    )
    # a source with --weights none is random weights too, whatever the strategy
    none = run_cli("fit", digits_folder, "--strategy", "full", "--weights", "none",
                   "--epochs", "1", "--out", tmp_path / "none")  # fmt: skip
    assert none.code == 0, none.stderr
    found = json.loads((tmp_path / "none" / "headstart.json").read_text())["lr_find"]
    assert found["lr"] == RANDOM_WEIGHTS_LR and "random weights" in found["rule"]
    given = run_cli("fit", digits_folder, "--strategy", "scratch", "--epochs", "1",
                    "--lr", "0.02", "--out", tmp_path / "given")  # fmt: skip
    assert given.code == 0, given.stderr
    assert json.loads((tmp_path / "given" / "headstart.json").read_text())["lr_find"] is None
    lrf = run_cli("lr-find", digits_folder, "--strategy", "scratch", "--epochs", "2",
                  "--out", tmp_path / "lrf", "--json")  # fmt: skip
    assert lrf.code == 0, lrf.stderr
    assert lrf.json()["fixed_by_fit"] == RANDOM_WEIGHTS_LR
    assert "does not read this curve" in lrf.stderr


def test_epochs_given_to_a_solved_head_are_said_to_be_unused(
    tmp_path: Path, digits_folder: Path
) -> None:
    r = run_cli("fit", digits_folder, "--strategy", "linear", "--epochs", "20",
                "--out", tmp_path / "lin")  # fmt: skip
    assert r.code == 0, r.stderr
    assert "--epochs 20: the head is solved" in r.stderr and "--no-solve-head" in r.stderr
    r = run_cli("fit", digits_folder, "--strategy", "linear", "--epochs", "20", "--lr", "0.01",
                "--out", tmp_path / "lin2")  # fmt: skip
    assert r.code == 0, r.stderr
    assert "--epochs 20 and --lr 0.01: the head is solved" in r.stderr


def test_an_unknown_strategy_lists_auto_too(digits_folder: Path) -> None:
    r = run_cli("fit", digits_folder, "--strategy", "bogus")
    assert r.code != 0 and "auto (the default)" in r.stderr and "partial:K" in r.stderr

"""`compare`: the same folds for every strategy, honest paired intervals, every output."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.stats import t as student_t

from headstart.choose.compare import compare
from headstart.choose.comparison import FoldScore, format_table, summarise
from headstart.config.options import CompareOptions
from headstart.errors import ConfigError, DataError
from tests.conftest import tiny_compare_options


def _score(strategy: str, fold: int, acc: float) -> FoldScore:
    return FoldScore(strategy, 0, fold, acc, acc, 1.0, n_train=80, n_test=20)


def test_summary_orders_and_pairs_against_the_best() -> None:
    a = [0.90, 0.80, 0.85, 0.95]
    b = [0.80, 0.78, 0.70, 0.90]
    scores = [_score("a", i, x) for i, x in enumerate(a)] + [
        _score("b", i, x) for i, x in enumerate(b)
    ]
    best, other = summarise(scores)
    assert best.strategy == "a" and best.diff_vs_best == 0.0
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    mean = sum(diffs) / 4
    var = sum((d - mean) ** 2 for d in diffs) / 3
    half = student_t.ppf(0.975, 3) * math.sqrt(var * (1 / 4 + 20 / 80))  # Nadeau-Bengio
    assert other.diff_vs_best == pytest.approx(mean)
    assert other.ci_low == pytest.approx(mean - half)
    assert other.ci_high == pytest.approx(mean + half)
    assert other.std == pytest.approx(math.sqrt(sum((x - sum(b) / 4) ** 2 for x in b) / 3))
    table = format_table([best, other])
    assert "best" in table and f"{mean:+.3f}" in table


def test_compare_writes_everything_on_the_same_folds(tmp_path: Path) -> None:
    options = tiny_compare_options(tmp_path / "cmp")
    result = compare(options)
    out = tmp_path / "cmp"
    for name in (
        "compare.csv",
        "compare.md",
        "compare.html",
        "compare.json",
        "compare.png",
        "curves.png",
    ):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert len(rows) == 3 * 2
    for fold in ("1", "2", "3"):
        sizes = {(r["n_train"], r["n_test"]) for r in rows if r["fold"] == fold}
        assert len(sizes) == 1  # every strategy saw the same fold
    assert sum(int(r["n_test"]) for r in rows if r["strategy"] == "linear") == 36
    assert {s.strategy for s in result.summary} == {"linear", "scratch"}
    page = (out / "compare.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<table>" in page
    stored = json.loads((out / "compare.json").read_text())
    assert stored["best"] == result.best and len(stored["scores"]) == 6
    assert stored["classes"] == 3  # the plots' chance line: 1/3
    # linear's head is solved on the frozen features (one measurement), scratch trains
    assert all(len(s.curve) == (1 if s.strategy == "linear" else 2) for s in result.scores)
    # --augment auto: linear trains on un-augmented images, scratch on light augmentation
    assert {(s["strategy"], s["augment"]) for s in stored["scores"]} == {
        ("linear", "none"),
        ("scratch", "light"),
    }
    line = next(x for x in (out / "compare.md").read_text().splitlines() if "augmentation" in x)
    assert line.startswith("- training augmentation: ") and "linear none" in line
    assert "scratch light" in line


def test_compare_refuses_bad_requests(tmp_path: Path) -> None:
    base = dict(
        data="builtin:digits?classes=0-2&per_class=2",
        source="builtin:digits-cnn",
        weights="none",
        out=str(tmp_path / "c"),
        progress=False,
    )
    with pytest.raises(ConfigError, match="unknown strategy 'fine'"):
        compare(CompareOptions(strategies="linear,fine", **base))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="twice"):
        compare(CompareOptions(strategies="linear,linear", **base))  # type: ignore[arg-type]
    with pytest.raises(DataError, match="fewer than --folds 3"):
        compare(CompareOptions(strategies="linear", folds=3, **base))  # type: ignore[arg-type]


def test_auto_recommends_per_fold_from_the_training_part_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import headstart.choose.compare as compare_module
    from headstart.data.images import load_data
    from tests.conftest import run_cli

    spec = "builtin:digits?classes=0-2&per_class=12"
    every = load_data(spec)
    fingerprints = {np.asarray(x).tobytes(): i for i, x in enumerate(every.items)}
    seen: list[set[int]] = []
    real = compare_module.recommend_for

    def spy(options: Any, data: Any) -> Any:
        seen.append({fingerprints[np.asarray(x).tobytes()] for x in data.items})
        return real(options, data)

    monkeypatch.setattr(compare_module, "recommend_for", spy)
    out = tmp_path / "cmp"
    result = run_cli(
        "compare", spec, "--source", "builtin:digits-cnn", "--strategies", "linear,partial:2,auto",
        "--folds", "3", "--epochs", "2", "--batch-size", "16", "--out", out,
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert len(seen) == 3  # once per fold, for auto only
    rows = list(csv.DictReader((out / "compare.csv").open()))
    auto_rows = sorted((r for r in rows if r["strategy"] == "auto"), key=lambda r: r["fold"])
    for fold_seen, row in zip(seen, auto_rows, strict=True):
        assert len(fold_seen) == int(row["n_train"]) == 24  # the training part, no more
    # the three held-out folds partition the data, and no fold's recommendation saw its own
    assert set().union(*seen) == set(range(36))
    assert all(len(a & b) == 12 for a, b in [(seen[0], seen[1]), (seen[1], seen[2])])
    chosen = [r["chosen"] for r in auto_rows]
    # small + similar: everything at once, the backbone at x0.1
    assert chosen == ["full (x0.1)"] * 3
    # auto trains exactly what it chose: same folds, same seed, same scores as that plan
    twin_out = tmp_path / "twin"
    twin = run_cli(
        "compare", spec, "--source", "builtin:digits-cnn", "--strategies", "linear,full",
        "--folds", "3", "--epochs", "2", "--batch-size", "16", "--out", twin_out,
    )  # fmt: skip
    assert twin.code == 0, twin.stderr
    twin_rows = list(csv.DictReader((twin_out / "compare.csv").open()))
    twins = {r["fold"]: r for r in twin_rows if r["strategy"] == "full"}
    for row in auto_rows:
        assert row["accuracy"] == twins[row["fold"]]["accuracy"]
    # the same folds and seed: linear scores the same in both comparisons
    linear = {r["fold"]: r["accuracy"] for r in rows if r["strategy"] == "linear"}
    assert linear == {r["fold"]: r["accuracy"] for r in twin_rows if r["strategy"] == "linear"}
    assert "auto chose per fold: " + "; ".join(chosen) in result.stderr  # one voice: stderr
    assert "auto chose per fold" in (out / "compare.md").read_text()
    stored = json.loads((out / "compare.json").read_text())
    assert [s["chosen"] for s in stored["scores"] if s["strategy"] == "auto"] == chosen
    assert all(s["case"] for s in stored["scores"] if s["strategy"] == "auto")

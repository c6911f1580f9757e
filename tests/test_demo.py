"""`make demo` end to end, shortened: pre-train, three strategies, the table."""

from __future__ import annotations

from pathlib import Path

from headstart.demo import STRATEGIES, format_table, run_demo


def test_demo_runs_and_prints_a_table(tmp_path: Path) -> None:
    rows = run_demo(tmp_path, seeds=2, per_class=3, epochs=2)
    assert sorted({r["strategy"] for r in rows}) == sorted(STRATEGIES)
    assert len(rows) == 2 * len(STRATEGIES)
    for r in rows:
        assert 0.0 <= float(r["accuracy"]) <= 1.0  # type: ignore[arg-type]
        assert (Path(str(r["run_dir"])) / "model.safetensors").is_file()
    table = format_table(rows, per_class=3)
    for strategy in STRATEGIES:
        assert f"\n{strategy} " in table
    assert "+-" in table

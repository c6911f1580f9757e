"""`make demo` end to end, shortened: pre-train, rank's verdict, three strategies, the table."""

from __future__ import annotations

from pathlib import Path

import pytest

from headstart.cli.demo import STRATEGIES, format_table, rank_verdict, run_demo


def test_demo_runs_and_prints_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demo = run_demo(tmp_path, seeds=2, per_class=3, epochs=2)
    said = capsys.readouterr()
    assert demo.verdict and demo.verdict not in said.err + said.out  # once: under the table
    rows = demo.rows
    assert sorted({r["strategy"] for r in rows}) == sorted(STRATEGIES)
    assert len(rows) == 2 * len(STRATEGIES)
    for r in rows:
        assert 0.0 <= float(r["accuracy"]) <= 1.0  # type: ignore[arg-type]
        assert (Path(str(r["run_dir"])) / "model.safetensors").is_file()
    assert demo.verdict.startswith("before fine-tuning, `headstart rank` on seed 0's 15")
    assert "the same network at random init by knn" in demo.verdict
    table = format_table(rows, per_class=3, verdict=demo.verdict)
    assert table.endswith(demo.verdict)
    for strategy in STRATEGIES:
        assert f"\n{strategy} " in table
    assert "+-" in table
    # on the source's own classes its features clear the line by k-NN
    own = rank_verdict(tmp_path / "pretrain-digits0-4", "builtin:digits?classes=0-4&per_class=6")
    assert "ranks the source above the same network at random init by knn" in own
    assert "expects a head start" in own

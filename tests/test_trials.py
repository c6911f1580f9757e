"""``compare``'s trials on an Optuna study: 2 worker processes on the default storage
(Optuna's journal file in --out), and two "machines" sharing a real PostgreSQL server,
give the scores of the one-after-another path, trial for trial."""

from __future__ import annotations

import csv
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from headstart.choose.compare import compare
from headstart.config.options import CompareOptions
from headstart.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
# 3 folds x 2 strategies: 6 trials of 24 digits each
BASE: dict[str, Any] = dict(
    data="builtin:digits?classes=0-2&per_class=12",
    source="builtin:digits-cnn",
    weights="none",
    strategies="linear,scratch",
    folds=3,
    epochs=2,
    batch_size=16,
    progress=False,
)
FLAGS = [
    BASE["data"], "--source", "builtin:digits-cnn", "--weights", "none",
    "--strategies", "linear,scratch", "--folds", "3", "--epochs", "2", "--batch-size", "16",
    "--quiet",
]  # fmt: skip


def _scores(out: Path) -> list[tuple[str, ...]]:
    """compare.csv's rows without the time column."""
    rows = list(csv.DictReader((out / "compare.csv").open()))
    return [tuple(v for k, v in r.items() if k != "seconds") for r in rows]


@pytest.fixture(scope="module")
def one_by_one(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Today's path: the trials one after another in this process."""
    out = tmp_path_factory.mktemp("one") / "cmp"
    compare(CompareOptions(**BASE, out=str(out)))
    return out


@pytest.mark.slow
def test_two_workers_give_the_scores_of_one(one_by_one: Path, tmp_path: Path) -> None:
    import optuna

    from headstart.choose.trials import _storage

    result = compare(CompareOptions(**BASE, out=str(tmp_path / "cmp"), trials_in_parallel=2))
    assert _scores(tmp_path / "cmp") == _scores(one_by_one)
    assert [s.strategy for s in result.scores] == ["linear", "scratch"] * 3
    # the study is in --out: one complete trial per (fold, strategy), its score attached
    storage = _storage(f"journal:{tmp_path / 'cmp' / 'trials.log'}")
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert sorted((t.params["fold"], t.params["strategy"]) for t in trials) == sorted(
        (f, s) for f in range(3) for s in ("linear", "scratch")
    )
    assert all(t.value == t.user_attrs["accuracy"] for t in trials)
    # stopped before its results were written: the same command trains nothing again
    # (two workers may both queue a point at the start; the later one steps aside, so
    # the study can hold more trials than points, but one complete trial each)
    before = len(study.get_trials())
    for written in (tmp_path / "cmp").iterdir():
        if not written.name.startswith("trials.log"):
            written.unlink()
    compare(CompareOptions(**BASE, out=str(tmp_path / "cmp"), trials_in_parallel=2))
    assert _scores(tmp_path / "cmp") == _scores(one_by_one)
    assert len(study.get_trials()) == before
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 6


def test_a_study_made_for_other_options_is_refused(tmp_path: Path) -> None:
    """The same --study NAME with other options (here: 2 folds) would mix their trials."""
    from headstart.choose.trials import Grid, Study, _open

    storage = f"journal:{tmp_path / 'trials.log'}"
    _open(Study("s", storage, Grid([{"fold": 0}]), {"folds": 3}))
    _open(Study("s", storage, Grid([{"fold": 0}]), {"folds": 3}))  # the same joins
    with pytest.raises(ConfigError, match="--study s .* was made for other options"):
        _open(Study("s", storage, Grid([{"fold": 0}]), {"folds": 2}))


def test_a_bad_input_in_the_workers_is_one_line(tmp_path: Path) -> None:
    """A source every trial fails on: the user reads one line, as without workers, and no
    worker's traceback (Optuna's trial warning, multiprocessing's report)."""
    flags = [f for f in FLAGS if f not in ("--weights", "none", "--quiet")]
    flags[flags.index("builtin:digits-cnn")] = "builtin:small-cnn"  # no default weights
    # a real process: the workers write to its stderr, which an in-process run cannot catch
    result = subprocess.run(
        [sys.executable, "-m", "headstart", "compare", *flags, "--trials-in-parallel", "2",
         "--out", str(tmp_path / "c")],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "has no default weights" in errors[0], result.stderr


def test_sqlite_is_refused_for_several_workers(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="can take the same trial"):
        compare(
            CompareOptions(
                **BASE,
                out=str(tmp_path / "c"),
                trials_in_parallel=2,
                storage=f"sqlite:///{tmp_path / 's.db'}",
            )
        )


def test_the_storage_password_stays_out_of_compare_json() -> None:
    from headstart.choose.comparison import run_config

    options = CompareOptions(storage="postgresql://me:secret@db:5432/trials")
    assert run_config(options)["storage"] == "postgresql://me:***@db:5432/trials"


# --- a real PostgreSQL server, started by the test where the Debian package is installed


def _pg_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def postgresql() -> Iterator[str]:
    """A PostgreSQL server in a temporary folder on a free port, with a database; its URL."""
    pg = _pg_bin()
    if pg is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("no PostgreSQL driver: pip install 'psycopg[binary]' (headstart[trials])")
    # initdb refuses root: run the server as the postgres user where we are root
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: PostgreSQL refuses to run as root")
        as_user = ["runuser", "-u", "postgres", "--"]
    folder = Path(tempfile.mkdtemp(prefix="headstart-pg-"))
    if as_user:
        shutil.chown(folder, "postgres")
    data, port = folder / "data", _free_port()

    def run(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=120)

    run(str(pg / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    run(
        str(pg / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "start",
        "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1",
    )  # fmt: skip
    try:
        run(str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "trials")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/trials"
    finally:
        run(str(pg / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_two_machines_share_a_postgresql_study(
    one_by_one: Path, postgresql: str, tmp_path: Path
) -> None:
    """Two ``headstart compare`` commands with the same --storage (and so the same study,
    named from the options) share the trials and both write the one-by-one scores."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    machines = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "headstart",
                "compare",
                *FLAGS,
                "--storage",
                postgresql,
                "--out",
                str(tmp_path / name),
            ],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    t0 = time.perf_counter()
    for m in machines:
        _, err = m.communicate(timeout=600)
        assert m.returncode == 0, err
    assert time.perf_counter() - t0 < 600
    assert _scores(tmp_path / "a") == _scores(one_by_one) == _scores(tmp_path / "b")
    import optuna

    (summary,) = optuna.get_all_study_summaries(postgresql)
    assert summary.study_name.startswith("compare-")
    complete = optuna.load_study(study_name=summary.study_name, storage=postgresql).get_trials(
        states=(optuna.trial.TrialState.COMPLETE,)
    )
    assert len(complete) == 6  # each trial trained once, by one machine or the other

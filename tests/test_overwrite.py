"""Nothing a user owns is deleted, and one process writes a run (issue #17, items 1 and 2).

``--overwrite`` replaces only headstart's own artefacts (a run dir, a comparison, an
evaluation, an export) or an empty folder, never the data or a folder holding it; two
fits into one ``--out`` do not both run.  Each test does what a user did: the real CLI,
real folders and, for the concurrent runs, a real second process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli, write_digit_pngs

# Fast fits: a tiny CNN at random, one epoch, no range test, no augmentation.
FAST = (
    "--source", "builtin:digits-cnn", "--weights", "none", "--augment", "none",
    "--epochs", "1", "--batch-size", "8", "--lr", "1e-3",
)  # fmt: skip


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) and its sha256."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A folder of images of this test's own: some tests try to destroy it."""
    return write_digit_pngs(tmp_path / "data", digits=(0, 1, 2), per_class=12)


def _notes(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "todo.txt").write_text("my notes")
    (folder / "per_class.csv").write_text("not headstart's")
    return folder


def _refused(result: object, *words: str) -> str:
    code, stderr = result.code, result.stderr  # type: ignore[attr-defined]
    assert code == 1, stderr
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    for word in words:
        assert word in stderr, stderr
    return str(stderr)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(REPO / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _start_fit(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "headstart", "fit", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or _env(),
    )


# -- item 1: --overwrite deletes only headstart's own ----------------------------------


def test_fit_out_the_data_itself_is_refused_and_the_images_stay(data: Path) -> None:
    before = _snapshot(data)
    stderr = _refused(
        run_cli("fit", data, "--out", data, "--overwrite", *FAST), str(data), "input data"
    )
    assert "is the input data" in stderr
    assert _snapshot(data) == before


def test_fit_out_the_parent_of_the_data_or_a_folder_inside_it_is_refused(
    data: Path, tmp_path: Path
) -> None:
    before = _snapshot(tmp_path)
    stderr = _refused(run_cli("fit", data, "--out", tmp_path, "--overwrite", *FAST))
    assert "holds the input data" in stderr and f"DATA {data}" in stderr
    # the same folder spelled another way
    spelled = tmp_path / "data" / ".."
    _refused(run_cli("fit", data, "--out", spelled, "--overwrite", *FAST), "holds the input data")
    inside = data / "runs" / "a"
    stderr = _refused(run_cli("fit", data, "--out", inside, *FAST))
    assert "is inside the input data" in stderr
    assert _snapshot(tmp_path) == before
    assert not (data / "runs").exists()  # not even a folder for a lock file


def test_fit_out_the_validation_data_is_refused(data: Path, tmp_path: Path) -> None:
    val = write_digit_pngs(tmp_path / "val", digits=(0, 1, 2), per_class=4)
    before = _snapshot(val)
    stderr = _refused(
        run_cli("fit", data, "--val", val, "--out", val, "--overwrite", *FAST), "--val"
    )
    assert "is the input data" in stderr
    assert _snapshot(val) == before


def test_overwrite_replaces_only_a_run_dir_or_an_empty_folder(data: Path, tmp_path: Path) -> None:
    notes = _notes(tmp_path / "notes")
    before = _snapshot(notes)
    stderr = _refused(run_cli("fit", data, "--out", notes, "--overwrite", *FAST), str(notes))
    assert "not a headstart run dir" in stderr and "never replaces it" in stderr
    assert _snapshot(notes) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "notes"]  # nothing left

    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli("fit", data, "--out", empty, *FAST, "--seed", "1").code == 0
    assert (empty / "headstart.json").is_file()
    replaced = run_cli("fit", data, "--out", empty, "--overwrite", *FAST, "--seed", "2")
    assert replaced.code == 0, replaced.stderr
    meta = json.loads((empty / "headstart.json").read_text())
    assert meta["config"]["seed"] == 2
    # no old run, staging folder, checkpoint or lock file is left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "empty", "notes"]


# -- item 2: one writer per run ---------------------------------------------------------


def _wait_for(paths: list[Path], proc: subprocess.Popen[str], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not any(p.exists() for p in paths):
        if proc.poll() is not None:
            raise AssertionError(f"the first fit ended early: {proc.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the first fit never started writing")
        time.sleep(0.02)


def test_a_second_fit_into_the_same_out_is_refused_naming_the_holder(
    data: Path, tmp_path: Path
) -> None:
    import headstart.api.fit  # noqa: F401  (loaded now: the second fit starts at once)

    out = tmp_path / "runs" / "conc"
    first = _start_fit(
        data, "--out", out, *FAST, "--strategy", "full", "--epochs", "40",
        "--checkpoint-every", "1", "--seed", "1",
    )  # fmt: skip
    try:
        _wait_for([tmp_path / "runs" / ".conc.lock", tmp_path / "runs" / ".conc.checkpoint"], first)
        # as in the issue: the second one even asks to overwrite
        second = run_cli("fit", data, "--out", out, "--overwrite", *FAST, "--seed", "2")
        stderr = _refused(second, str(out), "another headstart process is writing it")
        assert f"pid {first.pid}" in stderr and "headstart fit" in stderr
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err[-2000:]
    meta = json.loads((out / "headstart.json").read_text())
    assert meta["config"]["seed"] == 1 and meta["config"]["epochs"] == 40
    assert sorted(p.name for p in out.parent.iterdir()) == ["conc"]  # no lock, no checkpoint


def test_a_killed_fit_leaves_a_lock_file_that_blocks_nobody(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**_env(), "HEADSTART_TEST_KILL_AT": "step:6"}
    killed = _start_fit(
        data, "--out", out, *FAST, "--strategy", "full", "--epochs", "3",
        "--checkpoint-every", "2", env=env,
    )  # fmt: skip
    _, err = killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL, err[-2000:]
    lock = tmp_path / ".run.lock"
    assert lock.is_file()  # the dead process's record is still there...
    assert json.loads(lock.read_text())["pid"] == killed.pid
    resumed = run_cli("fit", "--resume", out)  # ...and nobody holds it
    assert resumed.code == 0, resumed.stderr
    assert (out / "headstart.json").is_file()
    assert not lock.exists()


# -- compare, export, evaluate ----------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished run and the data it was trained on."""
    root = tmp_path_factory.mktemp("overwrite-run")
    data = write_digit_pngs(root / "data", digits=(0, 1, 2), per_class=12)
    result = run_cli("fit", data, "--out", root / "run", *FAST)
    assert result.code == 0, result.stderr
    return root / "run", data


def test_evaluate_refuses_a_folder_that_is_not_an_evaluation(
    run_dir: tuple[Path, Path], tmp_path: Path
) -> None:
    run, data = run_dir
    notes = _notes(tmp_path / "notes")
    before = _snapshot(notes)
    stderr = _refused(run_cli("evaluate", run, data, "--out", notes), str(notes))
    assert "not a headstart evaluation" in stderr
    assert _snapshot(notes) == before
    data_before = _snapshot(data)
    _refused(run_cli("evaluate", run, data, "--out", data), "is the input data")
    _refused(run_cli("evaluate", run, data, "--out", data.parent), "holds the input data")
    assert _snapshot(data) == data_before
    # its own earlier evaluation is replaced when told (tests/test_user_errors.py: not
    # without --overwrite)
    assert run_cli("evaluate", run, data, "--out", tmp_path / "ev").code == 0
    assert run_cli("evaluate", run, data, "--out", tmp_path / "ev", "--overwrite").code == 0


def test_export_refuses_a_file_that_is_not_an_export(
    run_dir: tuple[Path, Path], tmp_path: Path
) -> None:
    run, _ = run_dir
    mine = tmp_path / "model.pt"
    mine.write_bytes(b"my own model")
    args = ("--format", "torchscript", "--overwrite")
    stderr = _refused(run_cli("export", run, "--out", mine, *args), str(mine))
    assert "not a headstart export" in stderr
    assert mine.read_bytes() == b"my own model"
    # the run's own files are not exports either
    weights = run / "model.safetensors"
    before = weights.read_bytes()
    _refused(run_cli("export", run, "--out", weights, *args), "not a headstart export")
    assert weights.read_bytes() == before
    # an earlier export is replaced
    out = tmp_path / "exp" / "m.pt"
    assert run_cli("export", run, "--out", out, *args).code == 0
    assert run_cli("export", run, "--out", out, *args).code == 0


def test_compare_refuses_a_folder_that_is_not_a_comparison(
    run_dir: tuple[Path, Path], tmp_path: Path
) -> None:
    _, data = run_dir
    args = (
        "--strategies", "linear", "--folds", "2", "--epochs", "1", "--batch-size", "8",
        "--lr", "1e-3", "--source", "builtin:digits-cnn", "--weights", "none", "--overwrite",
    )  # fmt: skip
    notes = _notes(tmp_path / "notes")
    before = _snapshot(notes)
    stderr = _refused(run_cli("compare", data, "--out", notes, *args), str(notes))
    assert "not a headstart comparison" in stderr
    assert _snapshot(notes) == before
    data_before = _snapshot(data.parent)
    _refused(run_cli("compare", data, "--out", data.parent, *args), "holds the input data")
    assert _snapshot(data.parent) == data_before


# What another headstart process does while it writes PATH: holds the flock on
# .NAME.lock beside it, its record (pid, host, command, start) in the file.
_HOLDER = """
import fcntl, json, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
record = {"pid": os.getpid(), "host": "here", "command": "headstart fit DATA", "started": "now"}
os.write(fd, json.dumps(record).encode())
print("held", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def _held_by_another_process(path: Path) -> Iterator[int]:
    """``path`` locked by a second process (as a running headstart holds it); its pid."""
    lock = path.parent / f".{path.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc.pid
    finally:
        proc.communicate("", timeout=30)


def test_compare_export_evaluate_refuse_an_output_another_process_writes(
    run_dir: tuple[Path, Path], tmp_path: Path
) -> None:
    run, data = run_dir
    for cli, out in [
        (("evaluate", run, data), tmp_path / "ev"),
        (("export", run, "--format", "torchscript"), tmp_path / "m.pt"),
        (("compare", data, "--strategies", "linear", "--folds", "2", *FAST[:4]), tmp_path / "c"),
    ]:
        with _held_by_another_process(out) as pid:
            stderr = _refused(run_cli(*cli, "--out", out), str(out))
        assert "another headstart process is writing it" in stderr
        assert f"pid {pid} on here" in stderr and "headstart fit DATA" in stderr
        assert not out.exists()


def test_cache_clear_leaves_what_another_process_writes(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "busy.safetensors.partial").write_bytes(b"half a download")
    (cache / "done.pth").write_bytes(b"weights")
    stale = cache / ".gone.pth.lock"  # left by a download that was killed
    stale.write_text('{"pid": 1}')
    with _held_by_another_process(cache / "busy.safetensors"):  # its download runs
        result = run_cli("cache", "clear", "--cache-dir", cache, "--yes")
        assert result.code == 0, result.stderr
        assert (cache / "busy.safetensors.partial").read_bytes() == b"half a download"
    assert not (cache / "done.pth").exists() and not stale.exists()

"""One voice on a terminal: each command run under a pseudo-terminal says each line once,
``compare`` stays short, warnings come once, inner runs only with ``-v``; no bar off a
terminal; built-in weights announced as such."""

from __future__ import annotations

import collections
import fcntl
import io
import json
import logging
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import headstart, run_cli
from headstart import _progress
from headstart.cli.output import OnceAndOuter

DATA = "builtin:digits?classes=0-2&per_class=20"


def _on_a_terminal(*args: str | os.PathLike[str], timeout: float = 240) -> tuple[int, list[str]]:
    """Run ``headstart ARGS`` with stdout and stderr a pseudo-terminal 120 columns wide;
    the lines a person would read: each line as the last ``\\r`` frame left it, escape
    sequences and blank lines dropped."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "headstart", *map(str, args)],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=dict(os.environ),
    )
    os.close(follower)
    raw = b""
    while True:
        ready, _, _ = select.select([leader], [], [], timeout)
        if not ready:
            proc.kill()
            break
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        raw += chunk
    code = proc.wait()
    os.close(leader)
    lines = []
    for line in raw.decode(errors="replace").replace("\r\n", "\n").split("\n"):
        line = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line).split("\r")[-1]
        if line.strip():
            lines.append(line)
    return code, lines


def _said_once(code: int, lines: list[str]) -> None:
    assert code == 0, "\n".join(lines)
    twice = [line for line, n in collections.Counter(lines).items() if n > 1]
    assert not twice, "\n".join(lines)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny fit (digits-cnn at random on 60 digits 0-2), made in this process."""
    out = tmp_path_factory.mktemp("voice") / "run"
    done = run_cli(
        "fit", DATA, "--source", "builtin:digits-cnn", "--weights", "none", "--strategy",
        "full", "--epochs", "2", "--out", out,
    )  # fmt: skip
    assert done.code == 0, done.stderr
    return out


def test_every_command_says_each_line_once_on_a_terminal(run: Path, tmp_path: Path) -> None:
    source = f"file:{run}"
    code, lines = _on_a_terminal(
        "fit", DATA, "--source", source, "--strategy", "full", "--epochs", "3",
        "--out", tmp_path / "fit",
    )  # fmt: skip
    _said_once(code, lines)
    assert sum(line.startswith("run dir:") for line in lines) == 1
    assert not any(line.startswith("epoch ") for line in lines)  # epochs: -v only
    code, lines = _on_a_terminal("recommend", DATA, "--source", source)
    _said_once(code, lines)
    assert sum(line.startswith("case:") for line in lines) == 1
    for args in (
        ("rank", DATA, "--sources", f"{source},builtin:digits-cnn@none", "--method", "knn"),
        ("export", run, "--out", tmp_path / "model.onnx"),
        ("embed", DATA, "--source", source, "--out", tmp_path / "f.npz"),
        ("evaluate", run, DATA, "--out", tmp_path / "eval"),
        ("lr-find", DATA, "--source", source, "--out", tmp_path / "lr"),
    ):
        code, lines = _on_a_terminal(*args)
        _said_once(code, lines)
    code, lines = _on_a_terminal("export", run, "--out", tmp_path / "model2.onnx")
    assert sum("model2.onnx" in line for line in lines) == 1, lines
    code, lines = _on_a_terminal("embed", DATA, "--source", source, "--out", tmp_path / "g.npz")
    assert sum("g.npz" in line for line in lines) == 1, lines


def test_predict_labels_go_to_stdout_once(run: Path, digits_folder: Path) -> None:
    code, lines = _on_a_terminal("predict", run, digits_folder / "d0")
    _said_once(code, lines)
    assert sum("\t" in line for line in lines) == len(list((digits_folder / "d0").iterdir()))
    # --json: the labels are in the JSON; the lines are for people, and -q silences them
    # (a child process: -q in this one would switch the bars off for the later tests)
    r = headstart("predict", run, digits_folder / "d0", "--json", "-q")
    assert r.code == 0 and r.stderr == "", r.stderr
    assert len(r.json()["predictions"]) == len(list((digits_folder / "d0").iterdir()))


def test_compare_is_short_and_verbose_shows_the_folds(tmp_path: Path) -> None:
    args = (
        "compare", DATA, "--source", "builtin:digits-cnn", "--weights", "none",
        "--strategies", "linear,full,scratch", "--folds", "3", "--epochs", "2",
    )  # fmt: skip
    code, lines = _on_a_terminal(*args, "--out", tmp_path / "a")
    _said_once(code, lines)
    assert len(lines) <= 15, "\n".join(lines)
    assert not any(line.startswith("plan:") for line in lines)
    code, loud = _on_a_terminal(*args, "--out", tmp_path / "b", "-v")
    assert code == 0
    assert sum(line.startswith("plan:") for line in loud) >= 9  # every fold's plan
    assert any(line.startswith("epoch ") for line in loud)


def test_each_warning_once_and_inner_runs_only_when_verbose() -> None:
    record = logging.LogRecord("headstart.x", logging.WARNING, "", 0, "only 30 steps", (), None)
    said = OnceAndOuter(verbose=False)
    assert said.filter(record) and not said.filter(record)
    info = logging.LogRecord("headstart.x", logging.INFO, "", 0, "plan: full", (), None)
    assert said.filter(info)
    with _progress.inner():
        assert not said.filter(info)
        assert OnceAndOuter(verbose=True).filter(info)


def test_no_bar_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Python API draws no bar when stderr is not a terminal, progress or not."""
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert list(_progress.bar(range(3), desc="x")) == [0, 1, 2]
    assert err.getvalue() == ""


def test_one_bar_at_a_time_named_by_the_inner_run(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Tty()
    monkeypatch.setattr(sys, "stderr", err)
    with _progress.inner("building weights"):
        outer = _progress.open_bar(2, "fit")
        assert not _progress.bars_on()  # a bar inside draws nothing
        assert list(_progress.bar(range(2), desc="features")) == [0, 1]
        outer.close()
    assert "building weights" in err.getvalue() and "features" not in err.getvalue()
    _progress.set_bars(False)  # -q
    try:
        assert not _progress.bars_on()
    finally:
        _progress.set_bars(True)


def test_builtin_default_weights_are_announced_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On an empty cache the default weights are built once, said as such, with no plan
    or run dir of their own; the recipe is cut to one epoch on few digits to stay quick."""
    from headstart.sources import builtin

    model = builtin.BUILTIN_MODELS["digits-cnn"]
    assert model.recipe is not None
    quick = {**model.recipe, "data": "builtin:digits?classes=0-4&per_class=12", "epochs": 1}
    monkeypatch.setitem(builtin.BUILTIN_MODELS, "digits-cnn", replace(model, recipe=quick))
    cache = tmp_path / "cache"
    args = ("embed", DATA, "--source", "builtin:digits-cnn", "--cache-dir", cache)
    first = run_cli(*args, "--out", tmp_path / "a.npz")
    assert first.code == 0, first.stderr
    said = f"building builtin:digits-cnn's default weights on digits 0-4 (once, cached at {cache}"
    assert first.stderr.count(said) == 1, first.stderr
    assert "plan:" not in first.stderr and "run dir" not in first.stderr
    again = run_cli(*args, "--out", tmp_path / "b.npz")
    assert again.code == 0 and "building" not in again.stderr


def test_rank_leaves_out_a_candidate_trained_on_the_data(
    digits_folder: Path, tmp_path: Path
) -> None:
    """A fit on the folder, then rank on that folder: warned of once, marked, last."""
    seen, other = tmp_path / "seen", tmp_path / "other"
    for out, data in ((seen, digits_folder), (other, DATA)):
        done = run_cli(
            "fit", data, "--source", "builtin:digits-cnn", "--weights", "none",
            "--strategy", "linear", "--epochs", "1", "--out", out,
        )  # fmt: skip
        assert done.code == 0, done.stderr
    meta = json.loads((seen / "headstart.json").read_text())
    assert meta["data"]["seen"]["n_items"] == 36
    ranked = run_cli(
        "rank", digits_folder, "--sources", f"file:{seen},file:{other}", "--method", "knn",
        "--no-random-init", "--json",
    )  # fmt: skip
    assert ranked.code == 0, ranked.stderr
    assert ranked.stderr.count(f"file:{seen} was trained on the data ranked") == 1
    candidates = ranked.json()["candidates"]
    assert [c["candidate"] for c in candidates] == [f"file:{other}", f"file:{seen}"]
    assert candidates[1]["seen_data"] and not candidates[0]["seen_data"]
    table = run_cli(
        "rank", digits_folder, "--sources", f"file:{seen}", "--method", "knn", "--no-random-init"
    )
    assert f"file:{seen} (seen!)" in table.stderr

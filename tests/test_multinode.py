"""``fit --nodes 2 --node-rank R --main-address HOST:PORT``: two "machines" of one process
each, both on 127.0.0.1, started as two ``headstart fit`` commands that meet through
torch.distributed's env:// rendezvous.  The group of two trains like one process with the
same global batch (as ``--processes 2`` does, tests/test_distributed.py: the same slices,
the same math; only the all-reduce's summation order differs), one run dir is written, and
a group killed mid-run resumes across both machines to the same weights."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from headstart.api.fit import fit
from headstart.config.options import FitOptions
from headstart.errors import ConfigError
from headstart.train.checkpoint import KILL_ENV, checkpoint_dir
from tests.test_distributed import ATOL, OPTIONS

REPO = Path(__file__).resolve().parents[1]
# OPTIONS as flags: 60 digits, no validation split (small data), 8 steps an epoch
FLAGS = [
    "builtin:digits?classes=5-9&per_class=12",
    "--weights", "none", "--strategy", "linear", "--epochs", "2", "--batch-size", "8",
    "--lr", "0.01", "--device", "cpu", "--no-feature-cache", "--quiet",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _two_nodes(
    tmp_path: Path, *flags: str, kill_at: str | None = None
) -> list[subprocess.CompletedProcess[str]]:
    """The same ``headstart fit`` on two "machines" (node ranks 0 and 1), run together."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    env.pop(KILL_ENV, None)
    if kill_at is not None:
        env[KILL_ENV] = kill_at
    address = f"127.0.0.1:{_free_port()}"
    command = [sys.executable, "-m", "headstart", "fit", *flags, "--nodes", "2"]
    nodes = [
        subprocess.Popen(
            [*command, "--node-rank", str(rank), "--main-address", address],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    done = []
    for p in nodes:
        out, err = p.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=ATOL, rtol=0, msg=key)


@pytest.mark.slow
def test_two_nodes_on_loopback_train_like_one_process(tmp_path: Path) -> None:
    one = fit(replace(OPTIONS, out=str(tmp_path / "one")))
    runs = _two_nodes(tmp_path, *FLAGS, "--out", "two")
    for r in runs:  # the other machine, too, read the run dir back once it was written
        assert r.returncode == 0, r.stderr
    # one run dir, written once; no checkpoint left; nothing else beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]
    two = load_file(tmp_path / "two" / "model.safetensors")
    _assert_close(load_file(one.run_dir / "model.safetensors"), two)


@pytest.mark.slow
def test_a_group_killed_on_both_machines_resumes_across_them(tmp_path: Path) -> None:
    """Both processes are SIGKILLed at optimizer step 10 (checkpoints every 3 steps: the
    last one is step 9's); ``--resume`` on both machines, meeting at a new port, finishes
    the run with the weights of an uninterrupted one-process run (to float rounding)."""
    one = fit(replace(OPTIONS, out=str(tmp_path / "one")))
    killed = _two_nodes(tmp_path, *FLAGS, "--out", "run", "--checkpoint-every", "3",
                        kill_at="step:10")  # fmt: skip
    assert all(r.returncode != 0 for r in killed)
    assert not (tmp_path / "run").exists() and (checkpoint_dir(tmp_path / "run")).is_dir()
    resumed = _two_nodes(tmp_path, "--resume", "run", "--quiet")
    for r in resumed:
        assert r.returncode == 0, r.stderr
    assert not checkpoint_dir(tmp_path / "run").exists()
    _assert_close(
        load_file(one.run_dir / "model.safetensors"),
        load_file(tmp_path / "run" / "model.safetensors"),
    )


def test_nodes_need_a_main_address_a_valid_rank_and_one_out(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--main-address HOST:PORT"):
        FitOptions(nodes=2)
    with pytest.raises(ConfigError, match="ranks are 0 to 1"):
        FitOptions(nodes=2, node_rank=2, main_address="127.0.0.1:29500")
    with pytest.raises(ConfigError, match="give HOST:PORT"):
        FitOptions(nodes=2, main_address="127.0.0.1")
    with pytest.raises(ConfigError, match="same --out on each"):
        fit(replace(OPTIONS, nodes=2, main_address="127.0.0.1:29500"))
    with pytest.raises(ConfigError, match=r"group's 4 processes \(--processes 2 x --nodes 2\)"):
        four = dict(processes=2, nodes=2, main_address="127.0.0.1:29500")
        fit(replace(OPTIONS, out=str(tmp_path / "x"), batch_size=6, **four))

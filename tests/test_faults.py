"""Real ``headstart fit`` processes killed with SIGKILL, then resumed: same weights, bit for bit.

The kill lands at a named point every time: ``HEADSTART_TEST_KILL_AT`` makes the process
SIGKILL itself there (after optimizer step N, after a part of checkpoint N is written
into its temporary folder, before the run dir is written).  A SIGKILL runs no cleanup,
exactly as when the machine dies or the scheduler kills the job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from headstart.train.checkpoint import KILL_ENV, checkpoint_dir

# 5 classes x 12 digits, 20% held out: 48 training images, batches of 8 -> 6 steps an
# epoch, 18 in all; a checkpoint every 4 steps lands mid-epoch (4, 8, 16) and at epoch
# ends (6, 12, 18).  Dropout makes the torch generator's state matter too.
FIT = [
    "fit",
    "builtin:digits?classes=5-9&per_class=12",
    "--weights",
    "none",
    "--strategy",
    "full",
    "--epochs",
    "3",
    "--batch-size",
    "8",
    "--dropout",
    "0.3",
    "--checkpoint-every",
    "4",
    "--deterministic",
    "--seed",
    "3",
    "--val-fraction",  # the kill points below count this split's steps and checkpoints
    "0.2",
    "-q",
]


def _headstart(*args: str | Path, kill_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop(KILL_ENV, None)
    if kill_at is not None:
        env[KILL_ENV] = kill_at
    return subprocess.run(
        [sys.executable, "-m", "headstart", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ after resume: {different}"


def _metrics_without_time(run: Path) -> list[list[str]]:
    lines = (run / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    keep = [i for i, name in enumerate(header) if name != "seconds"]
    return [[row.split(",")[i] for i in keep] for row in lines]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same fit, never interrupted."""
    out = tmp_path_factory.mktemp("faults") / "reference"
    proc = _headstart(*FIT, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert not checkpoint_dir(out).exists(), "a finished run leaves no checkpoint behind"
    return out


def _kill_then_resume(out: Path, *kill_points: str) -> None:
    """Start the fit, killing it at each point in turn (resuming after each), then finish."""
    for i, point in enumerate(kill_points):
        args = [*FIT, "--out", out] if i == 0 else ["fit", "--resume", out, "-q"]
        proc = _headstart(*args, kill_at=point)
        assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, proc.stderr)
        assert not out.exists(), "a killed run must not leave a run dir that looks complete"
        assert checkpoint_dir(out).is_dir()
    proc = _headstart("fit", "--resume", out, "-q")
    assert proc.returncode == 0, proc.stderr
    assert not checkpoint_dir(out).exists()


def test_killed_mid_epoch_and_mid_checkpoint_write_resumes_bit_identical(
    reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    # killed in epoch 2 (last checkpoint: step 8, mid-epoch), resumed; killed again while
    # checkpoint 16 is half written (its model and optimizer saved), resumed, finished
    _kill_then_resume(out, "step:10", "checkpoint:16:optimizer.pt")
    _assert_same_weights(_weights(reference), _weights(out))
    assert _metrics_without_time(out) == _metrics_without_time(reference)


@pytest.mark.slow
def test_killed_anywhere_and_resumed_ends_bit_identical(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    _kill_then_resume(
        out,
        "step:2",  # before the first checkpoint: starts again from the beginning
        "checkpoint:6:model.safetensors",  # an epoch-end checkpoint half written
        "checkpoint:12:manifest.json",  # whole but not yet renamed into place
        "run:write",  # training finished, the run dir not yet written
    )
    _assert_same_weights(_weights(reference), _weights(out))
    assert _metrics_without_time(out) == _metrics_without_time(reference)

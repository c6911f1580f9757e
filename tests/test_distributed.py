"""``fit --processes 2`` on CPU (gloo): the same training as one process with the same
global batch, up to floating-point summation order."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from headstart.api.fit import fit
from headstart.config.options import FitOptions
from headstart.errors import ConfigError
from headstart.train.checkpoint import checkpoint_dir

# linear: the backbone is frozen (BatchNorm in eval mode), so nothing depends on how a
# global batch is split; "full" would differ by per-process BatchNorm statistics.
OPTIONS = FitOptions(
    data="builtin:digits?classes=5-9&per_class=12",
    weights="none",
    strategy="linear",
    epochs=2,
    batch_size=8,
    lr=0.01,
    device="cpu",
    progress=False,
    # Both train through the backbone: several processes never use the feature cache
    # (each would cache its own share), and one process must do the same work to compare.
    feature_cache=False,
)
# Tolerance: the two processes' gradients are summed by all-reduce in another order than
# one process sums them; after 12 AdamW steps the weights agree to ~1e-7.
ATOL = 1e-5


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path: Path) -> None:
    one = fit(replace(OPTIONS, out=str(tmp_path / "one")))
    two = fit(replace(OPTIONS, out=str(tmp_path / "two"), processes=2))
    assert two.run_dir == tmp_path / "two" and not checkpoint_dir(two.run_dir).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # nothing else written
    a, b = one.model.state_dict(), two.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=ATOL, rtol=0, msg=key)
    assert [e.val_acc for e in one.history.epochs] == [e.val_acc for e in two.history.epochs]
    for e1, e2 in zip(one.history.epochs, two.history.epochs, strict=True):
        assert e1.train_loss == pytest.approx(e2.train_loss, abs=1e-5)
        assert e1.train_acc == e2.train_acc and e1.lr_head == e2.lr_head


def test_global_batch_must_divide_among_processes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="divisible by --processes 2"):
        fit(replace(OPTIONS, out=str(tmp_path / "x"), batch_size=7, processes=2))


@pytest.mark.slow
def test_a_checkpoint_the_main_process_cannot_write_stops_every_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full while the main process saves: the run stops within seconds with the main
    process's error as a CheckpointError (the other process is torn down with the group,
    not left waiting in a collective until it times out), and no run dir is written."""
    import time

    from headstart.train.checkpoint import KILL_ENV, CheckpointError

    # the step-3 checkpoint is the first (--checkpoint-every 3); its first part fails
    monkeypatch.setenv(KILL_ENV, "enospc:checkpoint:3:model.safetensors")
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="no space left on device"):
        fit(replace(OPTIONS, out=str(tmp_path / "run"), processes=2, checkpoint_every=3))
    assert time.perf_counter() - t0 < 120  # a hang would last the collective timeout
    assert not (tmp_path / "run").exists()

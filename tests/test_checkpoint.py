"""Checkpoints: written whole or not at all, verified on load, resumed with the saved options;
and the determinism they rely on (same seed, same metrics; workers do not matter)."""

from __future__ import annotations

import errno
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import headstart.train.checkpoint as checkpoint_module
import headstart.train.loop as train_module
from conftest import run_cli
from headstart.api.fit import fit
from headstart.config.options import FitOptions
from headstart.data.sampling import EpochBatchSampler, SeededDataset
from headstart.errors import ConfigError, DataError
from headstart.train.checkpoint import Checkpointer, CheckpointError, Progress, checkpoint_dir

OPTIONS = FitOptions(
    data="builtin:digits?classes=5-9&per_class=8",
    weights="none",
    strategy="full",
    epochs=2,
    batch_size=8,
    dropout=0.2,
    checkpoint_every=2,
    progress=False,
)


class Stop(Exception):
    """Stands in for a crash: raised at a named point of training."""


def _stop_at(monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    def hook(name: str) -> None:
        if name == point:
            raise Stop(name)

    monkeypatch.setattr(train_module, "kill_point", hook)


def _state(progress_step: int) -> dict[str, Any]:
    model = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3) + progress_step}
    return {
        "model": model,
        "best": None,
        "optimizer": {"optimizer": {"state": {}, "param_groups": []}, "scheduler": {}},
        "rng": checkpoint_module.get_rng_states(torch.Generator().manual_seed(1)),
    }


def _checkpointer(tmp_path: Path) -> Checkpointer:
    return Checkpointer.create(tmp_path / "run", {"options": {}}, every=1)


def test_save_load_round_trip_keeps_only_the_latest(tmp_path: Path) -> None:
    ck = _checkpointer(tmp_path)
    assert ck.load() is None
    for step in (1, 2):
        ck.save(Progress(global_step=step, loss_sum=0.1 * step), **_state(step))
    assert [s for s, _ in ck.steps()] == [2]
    loaded = ck.load()
    assert loaded is not None and loaded.progress.global_step == 2
    assert loaded.progress.loss_sum == 0.2
    assert torch.equal(loaded.model["w"], _state(2)["model"]["w"])
    assert torch.equal(loaded.rng["torch"], torch.get_rng_state())


@pytest.mark.parametrize("part", ["model.safetensors", "optimizer.pt", "rng.pt", "state.json"])
def test_damaged_or_missing_part_is_an_error_naming_it(tmp_path: Path, part: str) -> None:
    ck = _checkpointer(tmp_path)
    path = ck.save(Progress(global_step=1), **_state(1))
    assert path is not None
    target = path / part
    data = bytearray(target.read_bytes())
    data[-2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged") as info:
        ck.load()
    assert str(target) in str(info.value)
    target.unlink()
    with pytest.raises(CheckpointError, match="missing") as info:
        ck.load()
    assert str(target) in str(info.value)


def test_disk_full_while_saving_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ck = _checkpointer(tmp_path)
    first = ck.save(Progress(global_step=1), **_state(1))
    real_write = checkpoint_module._write_part
    written = []

    def full_disk(dest: Path, writer: Any) -> None:
        if written:  # the first part fits, the second does not
            raise OSError(errno.ENOSPC, "No space left on device", str(dest))
        written.append(dest)
        real_write(dest, writer)

    monkeypatch.setattr(checkpoint_module, "_write_part", full_disk)
    with pytest.raises(CheckpointError, match="no space left on device") as info:
        ck.save(Progress(global_step=2), **_state(2))
    assert f"{first} is intact" in str(info.value)
    monkeypatch.undo()
    assert [p for _, p in ck.steps()] == [first]
    assert not list(ck.folder.glob(".step-*")), "the half-written checkpoint is removed"
    loaded = ck.load()
    assert loaded is not None and loaded.progress.global_step == 1


@pytest.mark.parametrize(
    ("head_epochs", "stop"),
    [
        (0, "step:7"),  # epoch 2 of 2, after the step-6 checkpoint
        (1, "step:3"),  # in the head-only epoch, after the step-2 checkpoint
        (1, "step:7"),  # in the plan's epoch, after the head-only one
    ],
)
def test_interrupted_fit_resumes_to_the_same_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, head_epochs: int, stop: str
) -> None:
    options = replace(OPTIONS, head_epochs=head_epochs)
    whole = fit(replace(options, out=str(tmp_path / "whole")))
    out = tmp_path / "run"
    _stop_at(monkeypatch, stop)
    with pytest.raises(Stop):
        fit(replace(options, out=str(out)))
    monkeypatch.undo()
    assert not out.exists() and checkpoint_dir(out).is_dir()
    # A fresh fit may not silently throw the checkpoint away.
    with pytest.raises(ConfigError, match="--resume"):
        fit(replace(options, out=str(out)))
    resumed = fit(FitOptions(resume=str(out), progress=False))
    assert resumed.run_dir == out and not checkpoint_dir(out).exists()
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert [r.train_loss for r in resumed.history.epochs] == [
        r.train_loss for r in whole.history.epochs
    ]
    with pytest.raises(CheckpointError, match="finished"):
        fit(FitOptions(resume=str(out)))


def test_resume_refuses_options_that_change_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    _stop_at(monkeypatch, "step:3")
    with pytest.raises(Stop):
        fit(replace(OPTIONS, out=str(out)))
    monkeypatch.undo()
    r = run_cli("fit", "--resume", out, "--lr", "0.5", "--epochs", "2")
    assert r.code == 1
    assert "--lr 0.5 (the checkpoint has auto)" in r.stderr and "--epochs" not in r.stderr
    r = run_cli("fit", "--resume", out, "--overwrite")
    assert r.code == 1 and "--overwrite" in r.stderr
    r = run_cli("fit", "--resume", tmp_path / "nothing")
    assert r.code == 1 and "no checkpoint folder" in r.stderr
    # Runtime options (device, workers...) may change.
    r = run_cli("fit", "--resume", out, "--workers", "0", "--device", "cpu", "-q")
    assert r.code == 0, r.stderr


def test_a_fit_that_fails_before_its_first_checkpoint_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = run_cli("fit", OPTIONS.data, "--source", "timm:resnet1800", "--out", out)
    assert r.code == 1 and "resnet1800" in r.stderr
    assert not checkpoint_dir(out).exists() and not out.exists()


def test_resume_refuses_changed_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import write_digit_pngs

    data = write_digit_pngs(tmp_path / "digits", digits=(0, 1), per_class=10)
    out = tmp_path / "run"
    _stop_at(monkeypatch, "step:3")
    with pytest.raises(Stop):
        fit(replace(OPTIONS, data=str(data), out=str(out)))
    monkeypatch.undo()
    next(iter((data / "d0").iterdir())).unlink()
    with pytest.raises(DataError, match="changed since the checkpoint"):
        fit(FitOptions(resume=str(out)))


def _metrics_without_time(run: Path) -> list[list[str]]:
    lines = (run / "metrics.csv").read_text().splitlines()
    seconds = lines[0].split(",").index("seconds")
    return [row.split(",")[:seconds] + row.split(",")[seconds + 1 :] for row in lines]


@pytest.mark.slow
def test_same_seed_same_metrics_with_any_number_of_workers(
    tmp_path: Path, digits_folder: Path
) -> None:
    options = replace(
        OPTIONS, data=str(digits_folder), augment="light", checkpoint_every=0, epochs=2
    )
    a = fit(replace(options, out=str(tmp_path / "a")))
    b = fit(replace(options, out=str(tmp_path / "b")))
    c = fit(replace(options, out=str(tmp_path / "c"), workers=2))
    assert _metrics_without_time(a.run_dir) == _metrics_without_time(b.run_dir)
    assert _metrics_without_time(a.run_dir) == _metrics_without_time(c.run_dir)
    d = fit(replace(options, out=str(tmp_path / "d"), seed=1))
    assert _metrics_without_time(a.run_dir) != _metrics_without_time(d.run_dir)


def test_epoch_batches_are_a_function_of_seed_and_epoch() -> None:
    s = EpochBatchSampler(10, 4, seed=0)
    s.set_epoch(1)
    first = list(s)
    assert [len(b) for b in first] == [4, 4, 2] and len(s) == 3
    assert sorted(i for b in first for i, _ in b) == list(range(10))
    assert list(s) == first  # the same epoch again: the same batches and seeds
    s.set_epoch(1, skip=2)
    assert list(s) == first[2:]
    s.set_epoch(2)
    assert list(s) != first
    # Two processes: each takes half of every global batch; together the same batches.
    halves = []
    for rank in (0, 1):
        r = EpochBatchSampler(10, 4, seed=0, rank=rank, world=2)
        r.set_epoch(1)
        halves.append(list(r))
    assert [a + b for a, b in zip(*halves, strict=True)] == first
    dropped = EpochBatchSampler(9, 4, seed=0, drop_last=True)
    assert len(dropped) == 2 and all(len(b) == 4 for b in dropped)


def test_seeded_dataset_repeats_augmentation_and_leaves_the_global_generator() -> None:
    class Noise(torch.utils.data.Dataset[torch.Tensor]):
        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.rand(2)

    ds = SeededDataset(Noise())
    state = torch.get_rng_state()
    a, b = ds[(0, 7)], ds[(1, 7)]
    assert torch.equal(a, b) and not torch.equal(ds[(0, 8)], a)
    assert torch.equal(torch.get_rng_state(), state)
    np.testing.assert_array_equal(ds[(2, 7)].numpy(), a.numpy())

"""Checkpoints of an unfinished fit, and resuming it exactly.

Where: a run dir appears only when complete (:func:`headstart.rundir.write_run`), so an
unfinished run keeps its state in a hidden sibling folder, ``.NAME.checkpoint`` beside
``--out NAME``::

    runs/.myrun.checkpoint/
        run.json                  the options (as asked and as resolved), data fingerprints
        step-00000120/            the last complete checkpoint
            model.safetensors     weights
            best.safetensors      the best epoch's weights (absent when they are the above)
            optimizer.pt          optimizer, scheduler and gradient scaler state
            rng.pt                python, numpy, torch (and CUDA) generators, the loader's
            state.json            epoch, step, metrics so far, best-so-far, early stopping
            manifest.json         size and sha256 of every part; written last

A checkpoint is written into a temporary folder beside it (each file fsynced), and only
then renamed to ``step-N``; the previous one is deleted after that.  A kill at any moment
leaves the last complete checkpoint in place.  Loading checks every part against the
manifest: a missing or damaged part is an error naming the file.  When the run dir has
been written, the checkpoint folder is removed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import shutil
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from headstart._io import (
    atomic_write_json,
    current_umask,
    fsync_dir,
    sha256_file,
)
from headstart.errors import RunError, os_problem, storage_error
from headstart.rundir import is_run_dir

FORMAT = 1


RUN_FILE = "run.json"


MANIFEST = "manifest.json"


_STEP = re.compile(r"^step-(\d+)$")


# Tests make a process SIGKILL itself at a named point (e.g. "step:7",
# "checkpoint:12:optimizer.pt"): a kill that lands at the same place every time.
KILL_ENV = "HEADSTART_TEST_KILL_AT"


class CheckpointError(RunError):
    """A checkpoint cannot be written, or is missing or damaged."""


def kill_point(name: str) -> None:
    """SIGKILL this process if the test hook names this point (no-op otherwise); with
    ``enospc:POINT``, fail there as a full disk does instead."""
    hook = os.environ.get(KILL_ENV)
    if hook == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if hook == f"enospc:{name}":
        raise OSError(errno.ENOSPC, "No space left on device (test hook)")


def checkpoint_dir(out: str | os.PathLike[str]) -> Path:
    out = Path(out)
    return out.parent / f".{out.name}.checkpoint"


@dataclass
class Progress:
    """Where training is: what a checkpoint records besides tensors."""

    epoch: int = 1  # the epoch in progress (or the next one)
    step_in_epoch: int = 0  # its batches already trained on
    global_step: int = 0
    loss_sum: float = 0.0  # this epoch's training loss and accuracy so far
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0  # this epoch's time so far
    lr_head: float = 0.0  # the learning rates this epoch started with
    lr_backbone: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)  # finished epochs' metrics
    best_epoch: int = 0
    since_best: int = 0
    stopped_early: bool = False
    finished: bool = False
    best_is_model: bool = False  # the best weights are the current ones

    def next_epoch(self) -> None:
        """Close the epoch in progress: the next one starts with nothing of its own done."""
        self.epoch += 1
        self.step_in_epoch, self.loss_sum, self.correct, self.seen = 0, 0.0, 0, 0
        self.seconds, self.lr_head, self.lr_backbone = 0.0, 0.0, 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Progress:
        return cls(**d)


def get_rng_states(loader_generator: torch.Generator | None) -> dict[str, Any]:
    """Every generator a training step draws from (as tensors and plain values)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "loader": loader_generator.get_state() if loader_generator is not None else None,
    }


def set_rng_states(states: dict[str, Any], loader_generator: torch.Generator | None) -> None:
    random.setstate(states["python"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if loader_generator is not None and states["loader"] is not None:
        loader_generator.set_state(states["loader"])


def _write_safetensors(tensors: dict[str, torch.Tensor]) -> Callable[[Path], None]:
    from safetensors.torch import save_file

    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return lambda p: save_file(cpu, str(p))


def _write_torch(obj: Any) -> Callable[[Path], None]:
    return lambda p: torch.save(obj, p)


def _write_json(obj: Any) -> Callable[[Path], None]:
    text = json.dumps(obj, indent=1) + "\n"

    def write(p: Path) -> None:
        p.write_text(text)

    return write


def _write_part(path: Path, write: Callable[[Path], None]) -> None:
    """Write one file of a checkpoint and fsync it.  No rename of its own: the whole
    temporary folder is renamed into place once every part is written."""
    write(path)
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _mkdtemp(*, prefix: str, dir: Path) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700
    return tmp


@dataclass
class Loaded:
    """A verified checkpoint's contents."""

    path: Path
    progress: Progress
    model: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor] | None
    optimizer: dict[str, Any]
    rng: dict[str, Any]


class Checkpointer:
    """The checkpoint folder of one run: create or open it, save, load, remove.

    ``every``: also save every N optimizer steps (0: only at the end of each epoch).
    ``writer``: whether this process writes (in a data-parallel run only the main one).
    """

    def __init__(self, folder: Path, *, every: int = 0, writer: bool = True) -> None:
        self.folder = folder
        self.every = every
        self.writer = writer

    # -- the folder ---------------------------------------------------------------
    @classmethod
    def create(
        cls, out: Path, run_info: dict[str, Any], *, every: int = 0, writer: bool = True
    ) -> Checkpointer:
        """A fresh checkpoint folder for ``--out out`` holding ``run.json``."""
        folder = checkpoint_dir(out)
        if writer:
            if folder.exists():
                shutil.rmtree(folder)
            folder.parent.mkdir(parents=True, exist_ok=True)
            # Created whole (with run.json) or not at all: --resume never finds half of it.
            tmp = _mkdtemp(prefix=f"{folder.name}.tmp-", dir=folder.parent)
            try:
                atomic_write_json(tmp / RUN_FILE, {"format": FORMAT, **run_info})
                os.replace(tmp, folder)
                fsync_dir(folder.parent)
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                user = storage_error(exc, folder, instead="choose another --out")
                raise CheckpointError(
                    str(user) if user else f"cannot create {folder}: {exc.strerror or exc}"
                ) from exc
        return cls(folder, every=every, writer=writer)

    @classmethod
    def open(cls, out: Path) -> tuple[Checkpointer, dict[str, Any]]:
        """The checkpoint folder of an unfinished run, and its ``run.json``."""
        folder = checkpoint_dir(out)
        run_file = folder / RUN_FILE
        if not folder.is_dir():
            if is_run_dir(out):
                raise CheckpointError(
                    f"--resume {out}: that run finished (its run dir is complete); nothing to "
                    "resume"
                )
            raise CheckpointError(
                f"--resume {out}: no checkpoint folder {folder}; give the --out of a fit that "
                "was stopped"
            )
        try:
            info = json.loads(run_file.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{run_file}: missing; cannot resume") from None
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{run_file}: damaged ({exc}); cannot resume") from exc
        if not isinstance(info, dict) or info.get("format") != FORMAT or "options" not in info:
            raise CheckpointError(f"{run_file}: not a headstart checkpoint (format {FORMAT})")
        return cls(folder), info

    def remove(self) -> None:
        if self.writer:
            shutil.rmtree(self.folder, ignore_errors=True)

    def steps(self) -> list[tuple[int, Path]]:
        """Complete checkpoints (renamed into place), oldest first."""
        found = []
        for p in self.folder.iterdir() if self.folder.is_dir() else []:
            m = _STEP.match(p.name)
            if m and p.is_dir():
                found.append((int(m.group(1)), p))
        return sorted(found)

    def due(self, global_step: int) -> bool:
        return self.every > 0 and global_step % self.every == 0

    # -- saving -------------------------------------------------------------------
    def save(
        self,
        progress: Progress,
        *,
        model: dict[str, torch.Tensor],
        best: dict[str, torch.Tensor] | None,
        optimizer: dict[str, Any],
        rng: dict[str, Any],
    ) -> Path | None:
        """Write a complete checkpoint for ``progress.global_step``; keep the previous
        one until this one is whole.  Raises :class:`CheckpointError` (disk full...)."""
        if not self.writer:
            return None
        step = progress.global_step
        final = self.folder / f"step-{step:08d}"
        previous = [p for _, p in self.steps() if p != final]
        parts: dict[str, Callable[[Path], None]] = {
            "model.safetensors": _write_safetensors(model),
            "optimizer.pt": _write_torch(optimizer),
            "rng.pt": _write_torch(rng),
            "state.json": _write_json(progress.to_dict()),
        }
        if best is not None:
            parts["best.safetensors"] = _write_safetensors(best)
        tmp: Path | None = None
        try:
            tmp = _mkdtemp(prefix=f".{final.name}.tmp-", dir=self.folder)
            manifest: dict[str, Any] = {"format": FORMAT, "step": step, "parts": {}}
            for name, write in parts.items():
                _write_part(tmp / name, write)
                manifest["parts"][name] = {
                    "bytes": (tmp / name).stat().st_size,
                    "sha256": sha256_file(tmp / name),
                }
                kill_point(f"checkpoint:{step}:{name}")
            _write_part(tmp / MANIFEST, _write_json(manifest))
            fsync_dir(tmp)
            kill_point(f"checkpoint:{step}:{MANIFEST}")
            if final.exists():  # the same step again (a resumed run re-saving): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(self.folder)
        except Exception as exc:  # torch.save and safetensors wrap OSError in their own
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            kept = (
                f"the previous checkpoint {previous[-1]} is intact"
                if previous
                else ("no earlier checkpoint exists")
            )
            what = os_problem(exc)
            todo = "free space" if not what or what.startswith("the disk") else "make it writable"
            raise CheckpointError(
                f"cannot write checkpoint {final}: {what or exc}; {kept}; {todo}, then "
                "continue with --resume"
            ) from exc
        for old in previous:
            shutil.rmtree(old, ignore_errors=True)
        self._clean_temporary()
        return final

    def _clean_temporary(self) -> None:
        for p in self.folder.glob(".step-*.tmp-*"):
            shutil.rmtree(p, ignore_errors=True)

    # -- loading ------------------------------------------------------------------
    def load(self) -> Loaded | None:
        """The latest complete checkpoint, verified; None before the first one."""
        from safetensors.torch import load_file

        if self.writer:
            self._clean_temporary()
        steps = self.steps()
        if not steps:
            return None
        path = steps[-1][1]
        manifest_path = path / MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text())
            parts = manifest["parts"]
        except FileNotFoundError:
            raise CheckpointError(f"{manifest_path}: missing; the checkpoint is damaged") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{manifest_path}: damaged ({exc})") from exc
        for name in ("model.safetensors", "optimizer.pt", "rng.pt", "state.json"):
            if name not in parts:
                raise CheckpointError(f"{manifest_path}: damaged (does not list {name})")
        for name, want in parts.items():
            part = path / name
            if not part.is_file():
                raise CheckpointError(f"{part}: missing; the checkpoint is damaged")
            size = part.stat().st_size
            if size != want["bytes"] or sha256_file(part) != want["sha256"]:
                raise CheckpointError(
                    f"{part}: damaged ({size} bytes, sha256 differs from {MANIFEST}); "
                    "cannot resume exactly"
                )
        try:
            progress = Progress.from_dict(json.loads((path / "state.json").read_text()))
            model = load_file(str(path / "model.safetensors"))
            best = (
                load_file(str(path / "best.safetensors")) if "best.safetensors" in parts else None
            )
            optimizer = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
            rng = torch.load(path / "rng.pt", map_location="cpu", weights_only=True)
        except Exception as exc:  # hashes matched: a format this version cannot read
            raise CheckpointError(f"{path}: cannot be read ({exc})") from exc
        return Loaded(path, progress, model, best, optimizer, rng)


def is_resumable(out: str | os.PathLike[str]) -> bool:
    with contextlib.suppress(OSError):
        return (checkpoint_dir(out) / RUN_FILE).is_file()
    return False

"""Shared fixtures: a real folder of PNG images (scikit-learn's digits, drawn large)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from PIL import Image

if TYPE_CHECKING:
    from headstart.config.options import CompareOptions, FitOptions

REPO = Path(__file__).resolve().parents[1]


def write_digit_pngs(root: Path, *, digits: Sequence[int], per_class: int, size: int = 32) -> Path:
    """One sub-folder per class ("d0", "d1", ...) of RGB PNGs made from real digits."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images, targets = bunch.images, bunch.target
    for d in digits:
        folder = root / f"d{d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, idx in enumerate(np.flatnonzero(targets == d)[:per_class]):
            gray = (images[idx] * (255.0 / 16.0)).astype(np.uint8)
            img = Image.fromarray(gray, mode="L").resize((size, size), Image.BILINEAR)
            # a coloured digit on a coloured background, so RGB matters a little
            rgb = Image.merge("RGB", (img, img.point(lambda v: 255 - v), img))
            rgb.save(folder / f"{d}_{i:03d}.png")
    return root


def tiny_fit_options(tmp_path: Path, name: str, **kw: Any) -> FitOptions:
    """FitOptions for a few seconds' fit of digits-cnn at random on 60 digits 0-2, out
    to tmp_path/name with a cache of its own; ``kw`` overrides any field."""
    from headstart.config.options import FitOptions

    base: dict[str, Any] = dict(
        data="builtin:digits?classes=0-2&per_class=20",
        source="builtin:digits-cnn",
        weights="none",
        strategy="linear",
        val_fraction=0.2,
        epochs=3,
        batch_size=8,
        augment="none",
        cache_dir=str(tmp_path / "cache"),
        out=str(tmp_path / name),
        progress=False,
    )
    base.update(kw)
    return FitOptions(**base)


def tiny_compare_options(out: Path, **kw: Any) -> CompareOptions:
    """CompareOptions for a few seconds' comparison of linear and scratch on 36 digits
    0-2 at random weights (3 folds, 2 epochs), out to ``out``; ``kw`` overrides any field."""
    from headstart.config.options import CompareOptions

    base: dict[str, Any] = dict(
        data="builtin:digits?classes=0-2&per_class=12",
        source="builtin:digits-cnn",
        weights="none",
        strategies="linear,scratch",
        folds=3,
        epochs=2,
        batch_size=16,
        out=str(out),
        progress=False,
    )
    base.update(kw)
    return CompareOptions(**base)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Weights the tests make (builtin defaults) go to a temporary cache, not the user's."""
    os.environ["HEADSTART_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ.setdefault("HEADSTART_OFFLINE", "1")


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 3 classes x 12 real digit images, 32x32 RGB PNG."""
    return write_digit_pngs(
        tmp_path_factory.mktemp("images") / "digits", digits=(0, 1, 2), per_class=12
    )


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_cli(*args: str | os.PathLike[str]) -> CliResult:
    """Run the CLI's ``main`` in this process (same code path, no interpreter start-up)."""
    import contextlib
    import io

    from headstart.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # --debug lets errors escape as they would
            code = int(exc.code or 0)
        except Exception:
            import traceback

            traceback.print_exc(file=err)
            code = 1
    return CliResult(code, out.getvalue(), err.getvalue())


def headstart(
    *args: str | os.PathLike[str], cwd: Path | None = None, timeout: int = 300
) -> CliResult:
    """Run the real ``headstart`` command in a child process, as a user would."""
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-m", "headstart", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT folder (2 layers, 32 wide) with its WordPiece tokenizer."""
    from tests.hf_tiny import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("hf") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random ViT folder for 32x32 images, with its image processor."""
    from tests.hf_tiny import make_tiny_vit

    return make_tiny_vit(tmp_path_factory.mktemp("hf") / "tiny-vit")

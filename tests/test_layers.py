"""The layers of ARCHITECTURE.md hold: import-linter's contract passes on the tree, and fails
on a copy of it where a low layer imports a high one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

LINT = Path(sys.executable).parent / "lint-imports"


def _lint(src: Path, config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}  # grimp finds headstart by importing it
    return subprocess.run(
        [str(LINT), "--config", str(config), "--no-cache"],
        capture_output=True,
        text=True,
        env=env,
        cwd=src.parent,
        timeout=120,
    )


def test_the_tree_keeps_its_layers() -> None:
    done = _lint(REPO / "src", REPO / "pyproject.toml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(REPO / "src" / "headstart", src / "headstart")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    low = src / "headstart" / "data" / "labelled.py"
    low.write_text(low.read_text() + "\nfrom headstart.api.fit import fit  # upward\n")
    done = _lint(src, tmp_path / "pyproject.toml")
    assert done.returncode != 0
    assert "headstart.data is not allowed to import headstart.api" in done.stdout
    assert "headstart.data.labelled -> headstart.api.fit" in done.stdout


def test_the_architecture_names_every_module() -> None:
    text = (REPO / "ARCHITECTURE.md").read_text()
    package = REPO / "src" / "headstart"
    for path in package.rglob("*.py"):
        rel = path.relative_to(package).with_suffix("").as_posix()
        if path.name != "__init__.py":
            assert f"`{rel}" in text, f"ARCHITECTURE.md does not name {rel}"

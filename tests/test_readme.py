"""Every Python example in README.md runs as written, top to bottom, in one fresh process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.DOTALL | re.MULTILINE)


def test_readme_has_python_examples() -> None:
    blocks = python_blocks((REPO / "README.md").read_text())
    assert len(blocks) >= 2
    assert any("from headstart import HeadstartClassifier" in b for b in blocks)


def test_readme_python_examples_run(tmp_path: Path) -> None:
    # The blocks build on each other (the second reads the first's five.png), as a reader
    # would run them in one session; each one separately compiled, so a failure names it.
    blocks = python_blocks((REPO / "README.md").read_text())
    script = "\n".join(
        f"# --- README python block {i}\n{block}" for i, block in enumerate(blocks, start=1)
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # HEADSTART_CACHE: the tests' cache
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(1, 5)" in done.stdout, done.stdout
    assert (tmp_path / "runs" / "readme-clf" / "headstart.json").is_file()

"""README.md stays true: every Python example runs as written, top to bottom, in one fresh
process; recommend's rule is described with the code's thresholds."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from headstart.choose.recommend import (
    LARGE_EXAMPLES_PER_PARAM,
    LARGE_MIN_PER_CLASS,
    LARGE_PER_CLASS,
    SIMILAR_LEEP,
    SIMILAR_PROBE_GAIN,
)
from tests.conftest import REPO


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.DOTALL | re.MULTILINE)


def test_readme_has_python_examples() -> None:
    blocks = python_blocks((REPO / "README.md").read_text())
    assert len(blocks) >= 2
    assert any("from headstart import HeadstartClassifier" in b for b in blocks)


@pytest.mark.slow
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


def section(markdown: str, heading: str) -> str:
    start = markdown.index(heading)
    end = markdown.find("\n#", start + len(heading))
    return markdown[start : end if end >= 0 else None]


def test_readme_recommend_rule_matches_code() -> None:
    # recommend decides similarity by LEEP where the source has its classifier head, else
    # by the probe gain (recommend._similarity); README must say so, with these thresholds
    text = " ".join(section((REPO / "README.md").read_text(), "### Choosing and proving").split())
    quoted = [
        f"large from {LARGE_PER_CLASS} labelled examples per class",
        f"one labelled example per {1 / LARGE_EXAMPLES_PER_PARAM:,.0f} trainable parameters",
        f"at least {LARGE_MIN_PER_CLASS} in every class",
        f"similar from {SIMILAR_LEEP:.0%} of the way",
        f"similar from +{SIMILAR_PROBE_GAIN * 100:g} points",
    ]
    for phrase in quoted:
        assert phrase in text, phrase
    leep, probe = text.index("*LEEP* decides"), text.index("the *probe gain* decides")
    assert leep < probe, "LEEP decides first (where the source has its head), then the probe"
    assert "classifier head" in text[leep - 80 : probe]

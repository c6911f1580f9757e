"""README.md stays true: every Python example runs as written, top to bottom, in one fresh
process; recommend's rule is described with the code's thresholds; every time it quotes
names where it comes from."""

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
from headstart.choose.trials import GRACE_S
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


def prose(markdown: str) -> str:
    """README without its fenced code blocks (each replaced by as many blank lines)."""
    return re.sub(
        r"^```.*?^```", lambda m: "\n" * m.group(0).count("\n"), markdown, flags=re.S | re.M
    )


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


# A duration: "20 s", "27 seconds", "about 3 minutes", "~8 min", "0.35 s" (not "CPU s").
DURATION = re.compile(r"\b\d+(?:\.\d+)? ?(?:s|seconds|min|minutes|h|hours)\b")
# Where a time may come from: a command in backquotes, a bench script, this repo's script.
COMMAND = re.compile(
    r"`(?:headstart|python|make|nice|PYTHONPATH=|OMP_NUM_THREADS=|CI=|\.venv/bin/)[^`]*`"
    r"|bench/|readme_figures"
)
# Durations that are settings, not measurements, each from its constant in the code.
SETTINGS = (f"after {GRACE_S // 60} minutes without its heartbeat",)


def test_readme_times_name_their_source() -> None:
    # Every wall time in README's prose has, in its paragraph, the command that measured it
    # or a pointer to bench/ (RESULTS.md, a bench script, bench/readme_figures.py).
    assert (REPO / "bench" / "readme_figures.py").is_file()  # what README points to
    text = prose((REPO / "README.md").read_text())
    for setting in SETTINGS:
        assert setting in " ".join(text.split()), setting
    unsourced = []
    for paragraph in re.split(r"\n\s*\n", text):
        flat = " ".join(paragraph.split())
        for setting in SETTINGS:
            flat = flat.replace(setting, "")
        times = DURATION.findall(flat)
        if times and not COMMAND.search(flat):
            unsourced.append(f"{times}: {flat[:160]}")
    assert not unsourced, "README times with no command or bench/ pointer:\n" + "\n".join(unsourced)

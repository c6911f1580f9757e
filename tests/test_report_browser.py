"""The HTML reports as a reader's browser shows them: headless Chromium opens a fit's
``report.html``, ``headstart report``'s and ``compare.html`` at a phone's width, and the
test checks what it rendered: every image decoded, no markdown markup in the visible text,
no page wider than the phone.  A screenshot of each page is kept under ``test-artefacts/``
(or ``$HEADSTART_TEST_ARTEFACTS``).

Chromium is Debian's ``chromium`` package (``.ci/run`` installs it).  Without it the test
skips, except under CI (``CI=true``), where it fails: there it must run.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from headstart.api.fit import fit
from headstart.choose.compare import compare
from headstart.choose.report import report_runs
from tests.conftest import REPO, tiny_compare_options, tiny_fit_options

PHONE = (390, 844)  # CSS pixels: a common phone held upright
RESULT_ID = "headstart-test-result"

# Runs once the page has loaded (images included): what the reader sees, as JSON in a
# <pre> that --dump-dom prints.  Injected into a copy of the page, for the test only.
PROBE = f"""<script>
window.addEventListener("load", () => {{
  const result = {{
    text: document.body.innerText,
    images: Array.from(document.images).map(i => ({{
      file: i.dataset.file || i.src.slice(0, 40), width: i.naturalWidth, complete: i.complete,
    }})),
    headers: document.querySelectorAll("th").length,
    pageWidth: document.documentElement.scrollWidth,
    viewWidth: window.innerWidth,
  }};
  const pre = document.createElement("pre");
  pre.id = "{RESULT_ID}";
  pre.textContent = JSON.stringify(result);
  document.body.appendChild(pre);
}});
</script>"""

# Markdown that a renderer would have turned into markup, were it seen as text.
MARKUP = [
    ("a backquote", re.compile(r"`")),
    ("bold stars", re.compile(r"\*\*")),
    ("emphasis stars", re.compile(r"(?<![\w*])\*[^\s*][^*\n]*\*(?![\w*])")),
    ("an image link", re.compile(r"!\[[^\]]*\]\(")),
    ("a list line", re.compile(r"^\s*[-*+] ", re.MULTILINE)),
    ("a table line", re.compile(r"^\s*\|", re.MULTILINE)),
    ("a heading line", re.compile(r"^\s*#{1,6} ", re.MULTILINE)),
]


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


@pytest.fixture(scope="module")
def chromium() -> str:
    """Chromium's path; the test skips without it, or fails under CI."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    why = "no chromium on PATH (Debian: apt-get install -y chromium; .ci/run installs it)"
    if _in_ci():
        pytest.fail(why)
    pytest.skip(why)


def _artefacts() -> Path:
    folder = Path(os.environ.get("HEADSTART_TEST_ARTEFACTS") or REPO / "test-artefacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _browse(chromium: str, profile: Path, page: Path, *flags: str) -> str:
    """Chromium run headless on ``page`` with ``flags``; its stdout."""
    done = subprocess.run(
        [
            chromium, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
            "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={profile}",
            f"--window-size={PHONE[0]},{PHONE[1]}", *flags, page.as_uri(),
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _rendered(chromium: str, profile: Path, page: Path) -> dict[str, Any]:
    """What Chromium rendered of ``page``: the probe's JSON, read from the dumped DOM."""
    probed = page.with_name(page.stem + ".probe.html")
    probed.write_text(page.read_text().replace("</body>", PROBE + "\n</body>"))
    dom = _browse(chromium, profile, probed, "--virtual-time-budget=10000", "--dump-dom")
    found = re.search(rf'<pre id="{RESULT_ID}">(.*?)</pre>', dom, re.DOTALL)
    assert found, f"the probe did not run in {page.name}: {dom[-500:]}"
    result: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    return result


def _screenshot(chromium: str, profile: Path, page: Path, name: str) -> Path:
    shot = _artefacts() / name
    shot.unlink(missing_ok=True)
    tall = f"--window-size={PHONE[0]},{4 * PHONE[1]}"
    _browse(chromium, profile, page, tall, f"--screenshot={shot}")
    assert shot.is_file() and shot.stat().st_size > 10_000, f"no screenshot of {page.name}"
    return shot


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The smallest real runs' pages: a fit's report (with its range test), ``report``
    over that fit and a scratch one, and a comparison."""
    tmp = tmp_path_factory.mktemp("pages")
    scratch = fit(tiny_fit_options(tmp, "scratch", strategy="scratch", epochs=2)).run_dir
    # weights that are not random get a range test (random ones train at a fixed rate)
    full = fit(
        tiny_fit_options(
            tmp, "full", strategy="full", epochs=2, source=f"file:{scratch}", weights="default"
        )
    ).run_dir
    report_runs([full, scratch], tmp / "report")
    compare(tiny_compare_options(tmp / "compare", folds=2, label_fractions="0.5,1"))
    return {
        "fit": Path(full) / "report.html",
        "report": tmp / "report" / "report.html",
        "compare": tmp / "compare" / "compare.html",
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "plots"),
    [
        ("fit", {"curves.png", "lr_find.png"}),
        ("report", {"curves.png"}),
        ("compare", {"compare.png", "curves.png", "labels.png"}),
    ],
)
def test_reports_render_in_chromium(
    name: str, plots: set[str], chromium: str, pages: dict[str, Path], tmp_path: Path
) -> None:
    page = pages[name]
    seen = _rendered(chromium, tmp_path / "profile", page)
    shot = _screenshot(chromium, tmp_path / "profile", page, f"{name}.png")

    images = {i["file"]: i for i in seen["images"]}
    assert set(images) == plots, f"{name}: the plots shown are {sorted(images)}"
    broken = [f for f, i in images.items() if not (i["complete"] and i["width"] > 0)]
    assert not broken, f"{name}: these images did not decode: {broken}"
    assert seen["headers"] >= 2, f"{name}: its tables have no header cells"
    text = seen["text"]
    shown = [what for what, pattern in MARKUP if pattern.search(text)]
    assert not shown, f"{name}: markdown shows as text ({', '.join(shown)}):\n{text}"
    assert seen["pageWidth"] <= seen["viewWidth"], (
        f"{name}: the page is {seen['pageWidth']}px wide on a {seen['viewWidth']}px phone "
        f"(screenshot: {shot})"
    )


def test_the_markup_patterns_catch_raw_markdown_only() -> None:
    raw = ["a `code` span", "**bold**", "*start*: after", "- item", "| a | b |", "## heading"]
    raw += ["![plot](curves.png)"]
    for text in raw:
        assert any(p.search(text) for _, p in MARKUP), text
    rendered = "0.861 ± 0.039\nfull (head 1, x0.1)\nstart (epoch 1)\t0.600 (+0.300)\na - b"
    assert not [what for what, p in MARKUP if p.search(rendered)]

"""The transfer report: the three benefits, and plots and HTML a person can open."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from PIL import Image

from headstart.choose.compare import compare
from headstart.choose.report import benefits, report_runs
from headstart.errors import RunError
from headstart.rundir import write_run
from headstart.sources import build_source
from headstart.sources.target import TargetModel
from tests.conftest import run_cli, tiny_compare_options


def test_benefits_read_start_slope_and_asymptote() -> None:
    b = benefits([0.2, 0.5, 0.8, 0.9, 0.85])
    assert b.start == 0.2 and b.asymptote == 0.9
    assert b.epochs_to_90 == 4  # 0.9 is the first >= 0.9 * 0.9
    assert b.early_auc == pytest.approx((0.2 + 0.5 + 0.8) / 3)
    with pytest.raises(ValueError):
        benefits([])


def _run(folder: Path, strategy: str, curve: list[float], *, scratch: bool = False) -> Path:
    source = build_source("builtin:digits-cnn", weights="none")
    meta = {
        "kind": "fit",
        "source": source.describe(),
        "classes": ["a", "b"],
        "preprocessing": source.preprocessing.to_dict(),
        "plan": {"strategy": strategy, "reinitialise": scratch},
    }
    rows = [{"epoch": i + 1, "train_acc": 1.0, "val_acc": v} for i, v in enumerate(curve)]
    return write_run(folder, model=TargetModel(source.backbone, 2), meta=meta, metrics_rows=rows)


class _Page(HTMLParser):
    """The images (their ``data-file`` and ``src``) and header cells of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: dict[str, str] = {}
        self.headers = 0
        self.viewport = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images[a.get("data-file") or "?"] = a.get("src") or ""
        self.headers += tag == "th"
        self.viewport |= tag == "meta" and a.get("name") == "viewport"


def _check_images_and_page(folder: Path, page: str, pngs: list[str]) -> None:
    html = (folder / page).read_text()
    assert html.startswith("<!doctype html>") and "</html>" in html
    parsed = _Page()
    parsed.feed(html)
    assert sorted(parsed.images) == sorted(pngs), "the HTML must embed every plot"
    assert all(src.startswith("data:image/png;base64,") for src in parsed.images.values())
    assert parsed.headers >= 5 and parsed.viewport, "tables have header cells; phones scale"
    assert "<td>---" not in html and "|" not in html.split("<main>")[1], "raw markdown table"
    for name in pngs:
        path = folder / name
        assert path.stat().st_size > 5_000, f"{name} looks empty"
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            assert img.size[0] > 300 and img.size[1] > 200


def test_report_runs_against_scratch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    full = _run(tmp_path / "full", "full", [0.6, 0.8, 0.9])
    scratch = _run(tmp_path / "scratch", "scratch", [0.3, 0.5, 0.85], scratch=True)
    result = run_cli("report", full, scratch, "--out", tmp_path / "rep", "--json")
    assert result.code == 0, result.stderr
    data = result.json()
    assert data["baseline"] == "scratch"
    by = {r["label"]: r for r in data["runs"]}
    assert by["full"]["start"] == 0.6 and by["scratch"]["asymptote"] == 0.85
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "0.600 (+0.300)" in md and "0.900 (+0.050)" in md
    _check_images_and_page(tmp_path / "rep", "report.html", ["curves.png"])


def test_report_refuses_runs_without_a_validation_curve(tmp_path: Path) -> None:
    source = build_source("builtin:digits-cnn", weights="none")
    meta = {
        "kind": "fit",
        "source": source.describe(),
        "classes": ["a", "b"],
        "preprocessing": source.preprocessing.to_dict(),
        "plan": {"strategy": "full", "reinitialise": False},
    }
    run = write_run(
        tmp_path / "r",
        model=TargetModel(source.backbone, 2),
        meta=meta,
        metrics_rows=[{"epoch": 1, "train_acc": 1.0, "val_acc": None}],
    )
    with pytest.raises(RunError, match="no validation curve.*--val-fraction 0.2"):
        report_runs([run], tmp_path / "out")


def test_compare_report_with_label_fractions(tmp_path: Path) -> None:
    result = compare(tiny_compare_options(tmp_path / "cmp", folds=2, label_fractions="0.5,1"))
    half = [s for s in result.scores if s.fraction == 0.5]
    full = [s for s in result.scores if s.fraction == 1.0]
    assert len(half) == len(full) == 2 * 2
    assert all(h.n_train == 9 and f.n_train == 18 for h, f in zip(half, full, strict=True))
    assert all(s.n for s in result.summary) and {s.n for s in result.summary} == {2}
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "## The three benefits of transfer" in md and "labels/class" in md
    _check_images_and_page(
        tmp_path / "cmp", "compare.html", ["compare.png", "curves.png", "labels.png"]
    )


def test_the_page_escapes_html_and_names_a_missing_plot(tmp_path: Path) -> None:
    from headstart.choose.html import html_page

    page = html_page("# A `title`\n\n<script>x()</script>\n\n![gone](gone.png)\n", tmp_path)
    assert "<title>A title</title>" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "[plot not written: gone.png]" in page and "<img" not in page

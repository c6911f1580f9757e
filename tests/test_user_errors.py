"""What a user can cause or fix is one line that names the place and what to do, never
"internal error" (issue #17, items 6 and 7).

Each test does what the user did, through the CLI's ``main``: a read-only ``--out``,
export, evaluation or weights cache folder (``chmod a-w``, simulated as root:
``tests/fs_faults.py``), a disk that fills up while the run dir or a checkpoint is
written, bad flag values, a symlink loop among the images, labels CSVs that are not quite
``path,label``, a 1,000,000-character field, ``--overwrite`` over files headstart did not
write.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.conftest import run_cli, write_digit_pngs

# Fast fits: a tiny CNN at random, one epoch, no range test, no augmentation.
FAST = (
    "--source", "builtin:digits-cnn", "--weights", "none", "--augment", "none",
    "--epochs", "1", "--batch-size", "8", "--lr", "1e-3",
)  # fmt: skip


def _user_error(result: object, *words: str, code: int = 1) -> str:
    """The run failed with ``code``, one line on stderr holding ``words``, no traceback."""
    got, stderr = result.code, result.stderr  # type: ignore[attr-defined]
    assert got == code, stderr
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def _files(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished run and the data it was trained on."""
    root = tmp_path_factory.mktemp("user-errors")
    data = write_digit_pngs(root / "data", digits=(0, 1, 2), per_class=8)
    result = run_cli("fit", data, "--out", root / "run", *FAST)
    assert result.code == 0, result.stderr
    return root / "run", data


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_digit_pngs(tmp_path / "data", digits=(0, 1, 2), per_class=8)


# -- item 7b: a symlink loop is a bad file, not a file that vanishes -------------------


def test_fit_names_a_symlink_loop_and_skip_bad_leaves_it_out(data: Path, tmp_path: Path) -> None:
    loop = data / "d1" / "loop.png"
    os.symlink("loop.png", loop)
    _user_error(
        run_cli("fit", data, "--out", tmp_path / "run", *FAST),
        f"{loop} (symlink loop",
        "--skip-bad",
    )
    result = run_cli("fit", data, "--out", tmp_path / "run", *FAST, "--skip-bad")
    assert result.code == 0, result.stderr
    assert f"{loop}: symlink loop" in result.stderr  # the warning, as for other bad files
    meta = json.loads((tmp_path / "run" / "headstart.json").read_text())
    skipped = meta["data"]["checks"]["skipped"]["files"]
    assert [(f["path"], f["problem"][:12]) for f in skipped] == [(str(loop), "symlink loop")]


def test_predict_skip_bad_gives_a_symlink_loop_its_row(run_dir: tuple[Path, Path]) -> None:
    run, data = run_dir
    folder = data.parent / "to-label"
    folder.mkdir(exist_ok=True)
    good = folder / "a.png"
    good.write_bytes(next(data.rglob("*.png")).read_bytes())
    loop = folder / "loop.png"
    if not loop.is_symlink():
        os.symlink("loop.png", loop)
    for given in ([folder], [good, loop]):
        result = run_cli("predict", run, *given, "--skip-bad", "--json")
        assert result.code == 0, result.stderr
        rows = {r["path"]: r for r in result.json()["predictions"]}
        assert rows[str(loop)]["label"] is None
        assert rows[str(loop)]["error"].startswith("symlink loop")
        assert rows[str(good)]["label"] is not None
    _user_error(run_cli("predict", run, good, loop), "symlink loop")


# -- item 7c, 7d: labels CSVs -------------------------------------------------------------


def _labels_csv(data: Path, name: str, header: str, sep: str, extra: str = "") -> Path:
    rows = [header.replace(",", sep)] + [
        sep.join([str(p.relative_to(data)), p.parent.name, *([extra] if extra else [])])
        for p in sorted(data.rglob("*.png"))
    ]
    path = data / name
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize(
    ("header", "sep"),
    [("path,label", ";"), ("path,label", "\t"), ("file,label", ","), ("Image,label", ";")],
)
def test_labels_csv_with_other_delimiters_or_a_file_column_is_read(
    header: str, sep: str, data: Path, tmp_path: Path
) -> None:
    labels = _labels_csv(data, "labels.csv", header, sep)
    result = run_cli("fit", labels, "--out", tmp_path / "run", *FAST, "--json")
    assert result.code == 0, result.stderr
    meta = json.loads((tmp_path / "run" / "headstart.json").read_text())
    assert meta["classes"] == ["d0", "d1", "d2"]


def test_labels_csv_without_a_path_column_says_path_is_expected(
    run_dir: tuple[Path, Path], data: Path, tmp_path: Path
) -> None:
    run, _ = run_dir
    labels = _labels_csv(data, "labels.csv", "name,label", ",")
    _user_error(run_cli("fit", labels, "--out", tmp_path / "run", *FAST), str(labels), "'path'")
    line = _user_error(run_cli("evaluate", run, labels, "--out", tmp_path / "ev"), str(labels))
    assert "the header must name the image column 'path' and the label column 'label'" in line
    assert "(found: name, label)" in line
    both = _labels_csv(data, "both.csv", "file,image,label", ",")  # which one? say so
    _user_error(run_cli("evaluate", run, both, "--out", tmp_path / "ev"), "'path'")


def test_a_million_character_field_is_read(
    run_dir: tuple[Path, Path], data: Path, tmp_path: Path
) -> None:
    run, _ = run_dir
    labels = _labels_csv(data, "notes.csv", "path,label,notes", ",", extra="x" * 1_000_000)
    result = run_cli("evaluate", run, labels, "--out", tmp_path / "ev", "--json")
    assert result.code == 0, result.stderr
    assert result.json()["n_items"] == 24
    # a text that long: one document
    from headstart.data.texts import load_labelled

    texts = tmp_path / "docs.csv"
    texts.write_text("text,label\n" + "word " * 200_000 + ",long\nshort one,short\n")
    loaded = load_labelled(texts)
    assert loaded.classes == ["long", "short"] and len(str(loaded.items[0])) == 1_000_000

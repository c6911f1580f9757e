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

import numpy as np
import pytest

from tests.conftest import run_cli, write_digit_pngs
from tests.fs_faults import disk_full, read_only

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


# -- item 6: read-only folders ----------------------------------------------------------


def test_fit_into_a_read_only_out_is_refused_before_training(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    with read_only(out, monkeypatch):
        result = run_cli("fit", data, "--out", out, *FAST)
    line = _user_error(result, f"at {out}:", "no permission to write", "choose another --out")
    assert "make it writable" in line
    assert "optimizer steps" not in result.stderr  # refused before any training
    # inside a read-only folder: the same, about that folder
    with read_only(out, monkeypatch):
        result = run_cli("fit", data, "--out", out / "run", *FAST)
    _user_error(result, f"at {out}:", "choose another --out")


@pytest.mark.parametrize("command", ["export", "evaluate", "embed"])
def test_outputs_into_a_read_only_folder_are_refused(
    command: str,
    run_dir: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run, data = run_dir
    folder = tmp_path / "ro"
    folder.mkdir()
    args = {
        "export": ("export", run, "--format", "torchscript", "--out", folder / "m.pt"),
        "evaluate": ("evaluate", run, data, "--out", folder / "eval"),
        "embed": ("embed", data, *FAST[:4], "--out", folder / "f.npz"),
    }[command]
    with read_only(folder, monkeypatch):
        result = run_cli(*args)
    _user_error(result, str(folder), "no permission to write", "choose another --out")
    assert not any(folder.iterdir())


def test_a_read_only_weights_cache_is_named_with_what_to_do(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("HEADSTART_CACHE", str(cache))
    # builtin:digits-cnn's default weights are made on first use and kept in the cache
    args = ("fit", data, "--source", "builtin:digits-cnn", "--strategy", "linear", "--epochs", "1")
    with read_only(cache, monkeypatch):
        result = run_cli(*args, "--out", tmp_path / "run")
    _user_error(result, f"at {cache}:", "no permission to write", "HEADSTART_CACHE")
    assert not (tmp_path / "run").exists()


def test_an_output_no_command_converts_is_still_a_user_error(
    run_dir: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, _ = run_dir
    folder = tmp_path / "ro"
    folder.mkdir()
    with read_only(folder, monkeypatch):
        result = run_cli("report", run, "--out", folder / "report")
    _user_error(result, str(folder / "report"), "no permission to write")


# -- item 6: a full disk ----------------------------------------------------------------


def test_disk_full_while_the_run_dir_is_written(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "runs" / "a"
    disk_full(tmp_path / "runs", monkeypatch, only=lambda p: ".a.partial-" in str(p))
    result = run_cli("fit", data, "--out", out, *FAST)
    _user_error(
        result,
        f"the disk is full (no space left on device) at {out}: free space or choose another --out",
    )
    monkeypatch.undo()
    assert not out.exists()
    assert not list((tmp_path / "runs").glob(".a.partial-*"))  # the half-written run is gone


def test_disk_full_while_a_checkpoint_is_written_says_the_disk_is_full(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "runs" / "a"
    disk_full(tmp_path / "runs", monkeypatch, only=lambda p: ".step-" in str(p))
    args = ("--strategy", "full", "--checkpoint-every", "1")
    result = run_cli("fit", data, "--out", out, *FAST, *args)
    line = _user_error(result, "cannot write checkpoint", "the disk is full")
    assert "free space, then continue with --resume" in line
    # and when the checkpoint folder itself cannot be made
    monkeypatch.undo()
    disk_full(tmp_path / "runs", monkeypatch, only=lambda p: ".b.checkpoint" in str(p))
    result = run_cli("fit", data, "--out", tmp_path / "runs" / "b", *FAST, *args)
    _user_error(result, "the disk is full (no space left on device) at", ".b.checkpoint")


# -- the exit codes: one rule ------------------------------------------------------------


def test_exit_codes_follow_one_rule(run_dir: tuple[Path, Path], tmp_path: Path) -> None:
    """2: argparse refuses the command line; 1: headstart refuses what parsed (flag values
    out of range included); 3 never for either."""
    run, data = run_dir
    image = next(data.rglob("*.png"))
    usage = [
        ("fit", data, "--no-such-flag"),
        ("fit", data, "--epochs", "ten"),
        ("evaluate", run),  # DATA missing
        ("predict", run, image, "--top-k", "two"),
        ("export", run, "--format", "tflite"),
        ("nonsense",),
    ]
    refused = [
        ("fit", data, "--lr", "nan"),
        ("fit", data, "--image-size", "0"),
        ("fit", data, "--image-size", "-5"),
        ("fit", data, "--strategy", "everything"),
        ("compare", data, "--folds", "1"),
        ("embed", data, "--batch-size", "0", "--out", tmp_path / "f.npz"),
        ("evaluate", run, data, "--batch-size", "0", "--out", tmp_path / "ev"),
        ("predict", run, image, "--top-k", "0"),
        ("predict", run, image, "--batch-size", "-1"),
    ]
    for args in usage:
        result = run_cli(*args)
        assert result.code == 2, (args, result.code, result.stderr)
        assert "usage: headstart" in result.stderr
    for args in refused:
        _user_error(run_cli(*args), code=1)
    assert not (tmp_path / "ev").exists()


def test_a_bad_device_is_named_before_auto_races(tmp_path: Path) -> None:
    """--strategy auto (the default) would race its plans first, and every one would fail
    on the device: the one line names --device, not "no plan could train"."""
    data = write_digit_pngs(tmp_path / "d", digits=(0, 1), per_class=6)
    result = run_cli("fit", data, "--device", "bogus", "--out", tmp_path / "run")
    message = _user_error(result, "--device 'bogus'", code=1)
    assert "no plan could train" not in message
    assert not (tmp_path / "run").exists()


# -- item 7a: evaluate replaces an earlier evaluation only when told ----------------------


def test_evaluate_keeps_an_earlier_evaluation_without_overwrite(
    run_dir: tuple[Path, Path], tmp_path: Path
) -> None:
    run, data = run_dir
    out = tmp_path / "ev"
    assert run_cli("evaluate", run, data, "--out", out).code == 0
    (out / "my-notes.txt").write_text("mine")
    before = _files(out)
    few = write_digit_pngs(tmp_path / "few", digits=(0, 1), per_class=3)
    line = _user_error(run_cli("evaluate", run, few, "--out", out), str(out), "--overwrite")
    assert "holds a headstart evaluation" in line
    assert _files(out) == before
    assert run_cli("evaluate", run, few, "--out", out, "--overwrite").code == 0
    assert json.loads((out / "eval.json").read_text())["n_items"] == 6
    assert (out / "my-notes.txt").read_text() == "mine"  # only its own files replaced
    # RUN/eval, the default, the same
    assert run_cli("evaluate", run, data).code == 0
    _user_error(run_cli("evaluate", run, data), str(run / "eval"), "--overwrite")


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
    ("header", "sep", "name"),
    [
        ("path,label", ";", "labels.csv"),
        ("path,label", "\t", "labels.csv"),
        ("path,label", "\t", "labels.tsv"),  # an image list, not texts: it names paths
        ("file,label", ",", "labels.csv"),
        ("Image,label", ";", "labels.csv"),
    ],
)
def test_labels_csv_with_other_delimiters_or_a_file_column_is_read(
    header: str, sep: str, name: str, data: Path, tmp_path: Path
) -> None:
    labels = _labels_csv(data, name, header, sep)
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


# -- item 7e: embed --overwrite replaces only what embed wrote ---------------------------


def test_embed_overwrite_replaces_only_its_own_files(data: Path, tmp_path: Path) -> None:
    embed = ("embed", data, *FAST[:4], "--overwrite", "--out")
    theirs = tmp_path / "theirs.npz"
    np.savez(theirs, features=np.ones((2, 3)), labels=np.zeros(2))
    before = theirs.read_bytes()
    line = _user_error(run_cli(*embed, theirs), str(theirs), "not written by headstart embed")
    assert "never replaces it, even with --overwrite" in line
    assert theirs.read_bytes() == before
    # .npy: the sidecar says who wrote it
    mine = tmp_path / "mine.npy"
    np.save(mine, np.ones(3))
    mine.with_suffix(".json").write_text('{"my": "notes"}')
    _user_error(run_cli(*embed, mine), "not written by headstart embed")
    assert np.load(mine).tolist() == [1.0, 1.0, 1.0]
    # its own: replaced
    ours = tmp_path / "ours.npz"
    for _ in range(2):
        assert run_cli(*embed, ours).code == 0
    with np.load(ours) as z:
        assert json.loads(str(z["headstart"]))["written_by"] == "headstart embed"
        assert z["features"].shape[0] == 24

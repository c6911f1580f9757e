"""The CLI as a user runs it: fit on a real folder of PNGs, then predict and evaluate."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CliResult, headstart, run_cli

RUN_FILES = ("model.safetensors", "headstart.json", "metrics.csv", "curves.png", "report.md")


def _check_run(run: Path, classes: list[str]) -> dict:
    for name in RUN_FILES:
        assert (run / name).is_file(), f"{name} missing from {run}"
        assert (run / name).stat().st_size > 0
    meta = json.loads((run / "headstart.json").read_text())
    assert meta["classes"] == classes
    for key in ("source", "plan", "preprocessing", "metrics", "versions", "data"):
        assert key in meta
    assert len(meta["data"]["train"]["fingerprint"]) == 64
    assert meta["versions"]["torch"]
    return meta


def _use_run(run: Path, folder: Path, cli: Callable[..., CliResult] = run_cli) -> None:
    one = sorted(folder.glob("d1/*.png"))[0]
    pred = cli("predict", run, folder / "d2", one, "--json")
    assert pred.code == 0, pred.stderr
    rows = pred.json()["predictions"]
    assert len(rows) == 1 + len(list((folder / "d2").glob("*.png")))
    assert rows[-1]["path"] == str(one)  # in the order given, not sorted
    assert all(r["label"] in ("d0", "d1", "d2") and 0 <= r["probability"] <= 1 for r in rows)
    ev = cli("evaluate", run, folder, "--json")
    assert ev.code == 0, ev.stderr
    summary = ev.json()
    assert summary["n_items"] == 36
    assert 0.0 <= summary["accuracy"] <= 1.0
    assert [r["class"] for r in summary["per_class"]] == ["d0", "d1", "d2"]
    assert sum(map(sum, summary["confusion_matrix"])) == 36
    assert (run / "eval" / "confusion_matrix.png").stat().st_size > 0


def _fit(
    folder: Path, out: Path, *extra: str, cli: Callable[..., CliResult] = run_cli
) -> CliResult:
    result = cli(
        "fit", folder, *extra, "--epochs", "2", "--batch-size", "8", "--out", out, "--json"
    )
    assert result.code == 0, result.stderr
    return result


@pytest.mark.parametrize(
    "source",
    [
        ["--source", "builtin:small-cnn", "--weights", "none"],
        ["--source", "timm:resnet18", "--weights", "none", "--image-size", "32"],
        ["--source", "torchvision:resnet18", "--weights", "none", "--image-size", "32"],
    ],
    ids=["builtin", "timm", "torchvision"],
)
def test_fit_predict_evaluate_on_a_png_folder(
    digits_folder: Path, tmp_path: Path, source: list[str]
) -> None:
    # one source goes through real child processes, as a user's shell would run them
    cli = headstart if "builtin:small-cnn" in source else run_cli
    result = _fit(digits_folder, tmp_path / "run", *source, "--strategy", "full", cli=cli)
    summary = result.json()  # stdout is exactly one JSON object
    assert summary["run_dir"] == str(tmp_path / "run")
    assert summary["metrics"]["epochs_run"] == 2
    assert "train_s" in summary["timings"]
    meta = _check_run(tmp_path / "run", ["d0", "d1", "d2"])
    assert meta["plan"]["strategy"] == "full"
    assert "plan: full" in result.stderr  # the plan is printed before training
    _use_run(tmp_path / "run", digits_folder, cli)


def test_pretrain_then_fit_from_file_source(digits_folder: Path, tmp_path: Path) -> None:
    pre = run_cli(
        "pretrain",
        digits_folder,
        "--source",
        "builtin:small-cnn",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--out",
        tmp_path / "pre",
        "--json",
    )
    assert pre.code == 0, pre.stderr
    meta = _check_run(tmp_path / "pre", ["d0", "d1", "d2"])
    assert meta["kind"] == "pretrain" and meta["plan"]["strategy"] == "scratch"
    _fit(
        digits_folder,
        tmp_path / "run",
        "--source",
        f"file:{tmp_path / 'pre'}",
        "--strategy",
        "partial:2",
    )
    meta = _check_run(tmp_path / "run", ["d0", "d1", "d2"])
    weights = meta["source"]["weights"]
    assert weights["pretrained"] and weights["source_classes"] == ["d0", "d1", "d2"]
    assert meta["source"]["arch"] == "builtin:small-cnn"
    assert meta["plan"]["frozen_stages"] == ["stem", "block1"]
    # the run needs nothing but its folder: move the source run away
    shutil.rmtree(tmp_path / "pre")
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    shutil.move(tmp_path / "run", moved)
    _use_run(moved, digits_folder)


def _error(result: CliResult, *needles: str) -> None:
    assert result.code != 0
    lines = result.stderr.strip().splitlines()
    assert lines, "no error message"
    last = lines[-1]
    assert last.startswith("headstart: error:"), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in last, f"{needle!r} not in {last!r}"


def test_missing_folder(tmp_path: Path) -> None:
    _error(headstart("fit", tmp_path / "nope", "--out", tmp_path / "run"), str(tmp_path / "nope"))


def test_empty_class(digits_folder: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(digits_folder, data)
    (data / "empty").mkdir()
    _error(run_cli("fit", data, "--out", tmp_path / "run"), "empty")


def test_corrupt_image(digits_folder: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(digits_folder, data)
    bad = data / "d1" / "broken.png"
    bad.write_bytes(b"<html>not an image</html>")
    _error(
        run_cli(
            "fit",
            data,
            "--source",
            "builtin:small-cnn",
            "--weights",
            "none",
            "--out",
            tmp_path / "run",
        ),
        str(bad),
    )
    assert not (tmp_path / "run").exists()


def test_unknown_source_lists_valid(digits_folder: Path, tmp_path: Path) -> None:
    _error(
        run_cli("fit", digits_folder, "--source", "timm:resnet1800", "--out", tmp_path),
        "resnet1800",
        "resnet18",
    )
    _error(
        run_cli("fit", digits_folder, "--source", "zoo:thing", "--out", tmp_path),
        "zoo",
        "builtin, file, hf, timm, torchvision",
    )
    _error(
        run_cli("fit", digits_folder, "--source", "builtin:nope", "--out", tmp_path),
        "digits-cnn, small-cnn",
    )


def test_unknown_strategy_lists_valid(digits_folder: Path, tmp_path: Path) -> None:
    _error(
        run_cli("fit", digits_folder, "--strategy", "finetune", "--out", tmp_path / "r"),
        "finetune",
        "full, linear, lora, partial:K, scratch",
    )


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = headstart("fit", tmp_path / "nope", "--out", tmp_path / "run", "--debug")
    assert result.code != 0
    assert "Traceback" in result.stderr


def test_refuses_to_overwrite_a_run(digits_folder: Path, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("precious")
    _error(run_cli("fit", digits_folder, "--out", tmp_path / "run"), "--overwrite")
    assert (tmp_path / "run" / "keep.txt").read_text() == "precious"


def test_predict_on_a_missing_run(tmp_path: Path) -> None:
    _error(run_cli("predict", tmp_path / "norun", tmp_path), str(tmp_path / "norun"))


def test_compare_from_the_command_line(tmp_path: Path) -> None:
    pre = run_cli(
        "pretrain", "builtin:digits?classes=0-4", "--epochs", "2", "--out", tmp_path / "pre", "-q"
    )
    assert pre.code == 0, pre.stderr
    result = run_cli(
        "compare",
        "builtin:digits?classes=5-9&per_class=20",
        "--source",
        f"file:{tmp_path / 'pre'}",
        "--strategies",
        "linear,full,scratch",
        "--folds",
        "3",
        "--out",
        tmp_path / "cmp",
        "--json",
    )
    assert result.code == 0, result.stderr
    summary = result.json()
    assert {s["strategy"] for s in summary["summary"]} == {"linear", "full", "scratch"}
    assert len(summary["scores"]) == 9
    assert "vs " in result.stderr  # the table goes to stderr when stdout carries JSON
    for name in ("compare.csv", "compare.md", "compare.html", "compare.png", "curves.png"):
        assert (tmp_path / "cmp" / name).is_file()


def test_head_epochs_errors_come_before_any_work(tmp_path: Path) -> None:
    data = "builtin:digits?classes=0-2&per_class=10"
    r = run_cli("fit", data, "--strategy", "linear", "--head-epochs", "1", "--out", tmp_path / "a")
    assert r.code == 1 and "linear strategy trains only the head" in r.stderr
    assert "optimizer steps" not in r.stderr
    r = run_cli(
        "fit", data, "--strategy", "full", "--head-epochs", "3", "--epochs", "3",
        "--out", tmp_path / "b",
    )  # fmt: skip
    assert r.code == 1 and "--head-epochs 3 must be fewer than --epochs 3" in r.stderr
    assert "optimizer steps" not in r.stderr  # refused before loading data or building
    assert not list(tmp_path.iterdir())  # no run dir, no checkpoint folder


def test_predict_checks_every_image_first_and_skip_bad_labels_the_rest(
    tmp_path: Path, digits_folder: Path
) -> None:
    run = tmp_path / "run"
    r = run_cli(
        "fit", digits_folder, "--source", "builtin:digits-cnn", "--strategy", "linear",
        "--epochs", "1", "--out", run, "-q",
    )  # fmt: skip
    assert r.code == 0, r.stderr
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    good = sorted(digits_folder.rglob("*.png"))[:3]
    for i, src in enumerate(good):
        shutil.copy(src, inputs / f"{i}.png")
    (inputs / "1a-truncated.png").write_bytes(good[0].read_bytes()[:60])
    (inputs / "z-not-an-image.png").write_text("hello")
    r = run_cli("predict", run, inputs)
    assert r.code == 1
    # both named, with why, before any image is labelled
    assert "2 unreadable image(s)" in r.stderr and "--skip-bad" in r.stderr
    assert "1a-truncated.png" in r.stderr and "z-not-an-image.png" in r.stderr
    r = run_cli("predict", run, inputs, "--skip-bad", "--json")
    assert r.code == 0, r.stderr
    rows = r.json()["predictions"]
    assert [Path(row["path"]).name for row in rows] == [
        "0.png", "1.png", "1a-truncated.png", "2.png", "z-not-an-image.png",
    ]  # fmt: skip
    assert [row["label"] is None for row in rows] == [False, False, True, False, True]
    assert all(row["error"] for row in rows if row["label"] is None)
    r = run_cli("predict", run, inputs, "--skip-bad")
    assert r.code == 0 and "z-not-an-image.png\t(not labelled:" in r.stdout

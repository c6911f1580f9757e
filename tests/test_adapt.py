"""headstart adapt: the gradient reversal layer, CORAL, the schedules, and a tiny CLI run."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from headstart.api.adapt import load_unlabelled
from headstart.errors import ConfigError, DataError
from headstart.train.domain import (
    DomainClassifier,
    annealed_lr,
    coral_loss,
    dann_lambda,
    grad_reverse,
)
from tests.conftest import run_cli


def test_gradient_reversal_is_identity_forward_and_negates_scaled_gradients() -> None:
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, dtype=torch.float64)
    y = grad_reverse(x, 0.37)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, -0.37 * w)
    # lambda = 0 blocks the gradient altogether
    x.grad = None
    (grad_reverse(x, 0.0) * w).sum().backward()
    assert torch.count_nonzero(x.grad) == 0


def test_domain_classifier_sends_reversed_gradients_to_the_features() -> None:
    torch.manual_seed(0)
    clf = DomainClassifier(4, hidden=8)
    feats = torch.randn(6, 4, requires_grad=True)
    label = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    loss = torch.nn.functional.binary_cross_entropy_with_logits(clf(feats, 0.5), label)
    loss.backward()
    reversed_grad = feats.grad.clone()  # type: ignore[union-attr]
    clf_grads = [p.grad.clone() for p in clf.parameters()]  # type: ignore[union-attr]
    feats.grad = None
    clf.zero_grad()
    plain = torch.nn.functional.binary_cross_entropy_with_logits(clf.net(feats).squeeze(1), label)
    plain.backward()
    torch.testing.assert_close(reversed_grad, -0.5 * feats.grad)  # type: ignore[operator]
    # the domain classifier itself is trained normally (no reversal on its own weights)
    for a, p in zip(clf_grads, clf.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad)


def test_lambda_schedule_and_lr_annealing_follow_the_paper() -> None:
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert dann_lambda(0.1) == pytest.approx(2 / (1 + math.exp(-1)) - 1)
    values = [dann_lambda(p / 10) for p in range(11)]
    assert values == sorted(values) and values[-1] < 1.0
    assert annealed_lr(0.0) == 1.0
    assert annealed_lr(1.0) == pytest.approx(1 / 11**0.75)
    assert annealed_lr(0.5) == pytest.approx((1 + 10 * 0.5) ** -0.75)


def test_coral_loss_matches_the_direct_formula() -> None:
    rng = np.random.default_rng(0)
    s = rng.normal(size=(20, 6))
    t = rng.normal(size=(15, 6)) * np.array([1, 2, 3, 1, 1, 0.5]) + 4.0
    d = s.shape[1]
    direct = np.sum((np.cov(s, rowvar=False) - np.cov(t, rowvar=False)) ** 2) / (4 * d * d)
    got = coral_loss(torch.tensor(s), torch.tensor(t))
    assert float(got) == pytest.approx(direct, rel=1e-10)
    # shifting a domain's mean changes nothing: CORAL aligns second-order statistics only
    assert float(coral_loss(torch.tensor(s), torch.tensor(s + 3.0))) == pytest.approx(0, abs=1e-12)
    with pytest.raises(ConfigError, match="equal d"):
        coral_loss(torch.zeros(3, 2), torch.zeros(3, 4))


def test_unlabelled_target_ignores_labels(digits_folder: Path, tmp_path: Path) -> None:
    data = load_unlabelled(str(digits_folder), allow_hflip=False)
    assert len(data) == 36 and (data.targets == -1).all() and not data.allow_hflip
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="--target"):
        load_unlabelled(str(tmp_path / "empty"), allow_hflip=False)


@pytest.fixture(scope="module")
def shifted(digits_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The digits inverted: a labelled copy for --eval and a flat, unlabelled one."""
    root = tmp_path_factory.mktemp("shifted")
    labelled, flat = root / "labelled", root / "flat"
    flat.mkdir()
    for png in sorted(digits_folder.rglob("*.png")):
        dest = labelled / png.parent.name / png.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        ImageOps.invert(Image.open(png).convert("RGB")).save(dest)
        shutil.copy(dest, flat / f"{png.parent.name}_{png.name}")
    return {"labelled": labelled, "flat": flat}


@pytest.mark.parametrize("method", ["dann", "coral", "source-only"])
def test_adapt_cli_leaves_a_run_dir_predict_and_evaluate_use(
    method: str, digits_folder: Path, shifted: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    res = run_cli(
        "adapt", digits_folder, "--target", shifted["flat"], "--eval", shifted["labelled"],
        "--method", method, "--weights", "none", "--epochs", "2", "--batch-size", "8",
        "--out", out, "--json",
    )  # fmt: skip
    assert res.code == 0, res.stderr
    summary = res.json()
    assert summary["method"] == method and summary["run_dir"] == str(out)
    assert 0.0 <= summary["metrics"]["target_acc"] <= 1.0
    assert (out / "eval" / "eval.json").is_file()  # the finished run, evaluated on --eval
    meta = __import__("json").loads((out / "headstart.json").read_text())
    assert meta["kind"] == "adapt" and meta["adapt"]["method"] == method
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and "target_acc" in rows[0]
    if method == "dann":
        assert "domain_acc" in meta["metrics"] and meta["metrics"]["domain_acc"] is not None
    pred = run_cli("predict", out, shifted["flat"], "--json")
    assert pred.code == 0, pred.stderr
    predictions = pred.json()["predictions"]
    assert len(predictions) == 36 and {p["label"] for p in predictions} <= {"d0", "d1", "d2"}
    # adapt evaluated into RUN/eval already: evaluate keeps it unless told to replace it
    ev = run_cli("evaluate", out, shifted["labelled"], "--json")
    assert ev.code == 1 and "--overwrite" in ev.stderr
    ev = run_cli("evaluate", out, shifted["labelled"], "--json", "--overwrite")
    assert ev.code == 0, ev.stderr
    assert ev.json()["accuracy"] == pytest.approx(summary["metrics"]["target_acc"])


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--method", "mmd"], "--method 'mmd'; valid: dann, coral, source-only"),
        (["--strategy", "linear"], "trains none of it"),
        (["--coral-weight", "-1", "--method", "coral"], "--coral-weight"),
    ],
)
def test_adapt_cli_errors(
    digits_folder: Path, shifted: dict[str, Path], tmp_path: Path, args: list[str], match: str
) -> None:
    res = run_cli(
        "adapt", digits_folder, "--target", shifted["flat"], "--weights", "none",
        "--epochs", "1", "--out", tmp_path / "run", *args,
    )  # fmt: skip
    assert res.code == 1, res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert match in line
    assert not (tmp_path / "run").exists()


def test_adapt_cli_needs_a_target(digits_folder: Path, tmp_path: Path) -> None:
    res = run_cli("adapt", digits_folder, "--out", tmp_path / "run")
    assert res.code == 1 and "--target" in res.stderr

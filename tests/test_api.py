"""The Python API: fit on real data, the scikit-learn style wrapper, repeatability."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from headstart.api.classifier import HeadstartClassifier
from headstart.api.fit import fit, pretrain
from headstart.api.predict import evaluate, predict
from headstart.config.options import FitOptions, PretrainOptions
from headstart.errors import ConfigError
from headstart.sources import build_source

DIGITS = "builtin:digits?classes=0-2&per_class=30"


def _options(tmp_path: Path, name: str, **kw: object) -> FitOptions:
    base: dict[str, object] = dict(
        data=DIGITS,
        source="builtin:digits-cnn",
        weights="none",
        epochs=2,
        batch_size=16,
        out=str(tmp_path / name),
        progress=False,
    )
    base.update(kw)
    return FitOptions(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def source_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("src") / "pre"
    return pretrain(
        PretrainOptions(
            data="builtin:digits?classes=5-9&per_class=30", out=str(out), epochs=2, progress=False
        )
    ).run_dir


def test_linear_fit_keeps_every_pretrained_tensor(source_run: Path, tmp_path: Path) -> None:
    result = fit(
        _options(tmp_path, "lin", source=f"file:{source_run}", weights="default", strategy="linear")
    )
    before = load_file(str(source_run / "model.safetensors"))
    after = load_file(str(result.run_dir / "model.safetensors"))
    body = [k for k in before if k.startswith("backbone.")]
    assert body and any("running_mean" in k for k in body)
    for key in body:
        assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["head.weight"][:3], after["head.weight"])


def test_scratch_reinitialises_a_pretrained_source(source_run: Path, tmp_path: Path) -> None:
    result = fit(
        _options(
            tmp_path,
            "s",
            source=f"file:{source_run}",
            weights="default",
            strategy="scratch",
            epochs=1,
        )
    )
    assert result.plan.reinitialise
    assert not result.source["weights"]["pretrained"]
    # same architecture and preprocessing as the source, none of its weights
    assert result.source["arch"] == "builtin:digits-cnn"
    before = load_file(str(source_run / "model.safetensors"))
    after = load_file(str(result.run_dir / "model.safetensors"))
    assert not torch.equal(
        before["backbone.body.stem.0.weight"], after["backbone.body.stem.0.weight"]
    )


def test_same_seed_same_metrics(tmp_path: Path) -> None:
    a = fit(_options(tmp_path, "a", strategy="full", seed=3))
    b = fit(_options(tmp_path, "b", strategy="full", seed=3))
    c = fit(_options(tmp_path, "c", strategy="full", seed=4))
    drop_time = lambda p: [",".join(r.split(",")[:-1]) for r in p.read_text().splitlines()]  # noqa: E731
    assert drop_time(a.run_dir / "metrics.csv") == drop_time(b.run_dir / "metrics.csv")
    assert drop_time(a.run_dir / "metrics.csv") != drop_time(c.run_dir / "metrics.csv")


def test_early_stopping_and_last_selection(tmp_path: Path) -> None:
    stopped = fit(_options(tmp_path, "p", strategy="full", epochs=30, lr=1e-6, patience=2))
    assert stopped.metrics["stopped_early"]
    assert stopped.metrics["epochs_run"] < 30
    last = fit(_options(tmp_path, "l", strategy="full", epochs=3, select="last"))
    assert last.metrics["best_epoch"] == 3


def test_classifier_fit_predict_score_load(tmp_path: Path) -> None:
    clf = HeadstartClassifier(
        source="builtin:digits-cnn",
        weights="none",
        strategy="full",
        epochs=3,
        batch_size=16,
        out=str(tmp_path / "clf"),
        progress=False,
    )
    assert clf.fit(DIGITS) is clf
    assert clf.classes_ == ["0", "1", "2"]
    assert clf.plan_.strategy == "full" and len(clf.history_.epochs) == 3
    images = _digit_pngs(tmp_path / "imgs")
    labels = clf.predict(images)
    assert len(labels) == len(images) and set(labels) <= {"0", "1", "2"}
    probs = clf.predict_proba(images)
    assert probs.shape == (len(images), 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    acc = clf.score("builtin:digits?classes=0-2&per_class=30&split=rest")
    assert 0.0 <= acc <= 1.0
    again = HeadstartClassifier.load(clf.run_dir_)
    assert again.predict(images) == labels


def test_classifier_refuses_unknown_options_and_unfitted_use() -> None:
    with pytest.raises(TypeError, match="strategy_name"):
        HeadstartClassifier(strategy_name="linear")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="strategy_name"):
        HeadstartClassifier().set_params(strategy_name="linear")
    with pytest.raises(ConfigError, match="not fitted"):
        HeadstartClassifier().predict(["x.png"])


def test_classifier_follows_scikit_learns_estimator_rules(tmp_path: Path) -> None:
    from dataclasses import fields

    from sklearn.base import clone

    from headstart.api.classifier import _NOT_PARAMS

    # The parameters are FitOptions' fields with FitOptions' defaults.
    params = HeadstartClassifier().get_params()
    options = {f.name: f.default for f in fields(FitOptions) if f.name not in _NOT_PARAMS}
    assert params == options
    # __init__ stores and checks nothing: a bad value fails in fit, by name.
    bad = HeadstartClassifier(strategy="sideways", out=str(tmp_path / "bad"))
    assert bad.strategy == "sideways"
    with pytest.raises(ConfigError, match="sideways"):
        bad.fit("builtin:digits?classes=0-1&per_class=5")
    # clone gives an unfitted copy with equal parameters; set_params changes one.
    clf = HeadstartClassifier(strategy="full", epochs=3)
    copy = clone(clf)
    assert copy is not clf and copy.get_params() == clf.get_params()
    assert copy.set_params(epochs=5).epochs == 5 and clf.epochs == 3
    assert "strategy='full'" in repr(clf)


def test_evaluate_and_predict_reject_foreign_labels(tmp_path: Path) -> None:
    run = fit(_options(tmp_path, "r", strategy="linear", epochs=1)).run_dir
    with pytest.raises(Exception, match="not classes of this model|valid"):
        evaluate(run, "builtin:digits?classes=7-8&per_class=5")
    rows = predict(run, _digit_pngs(tmp_path / "imgs"), top_k=2)
    assert all(len(r["top"]) == 2 for r in rows)


def _digit_pngs(folder: Path) -> list[str]:
    from tests.conftest import write_digit_pngs

    write_digit_pngs(folder, digits=(0, 1), per_class=2, size=8)
    return sorted(str(p) for p in folder.rglob("*.png"))


def test_source_build_is_repeatable_for_scratch() -> None:
    torch.manual_seed(0)
    a = build_source("builtin:digits-cnn", weights="none").backbone.state_dict()
    torch.manual_seed(0)
    b = build_source("builtin:digits-cnn", weights="none").backbone.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_public_api_is_importable_from_the_package_without_loading_torch_first() -> None:
    import subprocess
    import sys

    code = (
        "import sys, headstart\n"
        "assert 'torch' not in sys.modules, 'import headstart loaded torch'\n"
        "from headstart import HeadstartClassifier, fit, evaluate, predict, pretrain, FitOptions\n"
        "assert set(headstart.__all__) - {'__version__'} == set(headstart._EXPORTS)\n"
        "for name in headstart.__all__: getattr(headstart, name)\n"
        "import headstart.api.fit as module; assert module.fit is fit\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

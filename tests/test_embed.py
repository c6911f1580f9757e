"""headstart embed: features and labels written for other tools, in each format."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import save_file

from headstart.data.images import load_data
from headstart.features.extract import extract_features
from headstart.sources import build_source
from tests.conftest import run_cli

DATA = "builtin:digits?classes=0-2&per_class=6"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fixed weights file, so two builds of the source are the same model."""
    source = build_source("builtin:digits-cnn", weights="none")
    path = tmp_path_factory.mktemp("w") / "cnn.safetensors"
    save_file({k: v.contiguous() for k, v in source.backbone.body.state_dict().items()}, path)
    return path


def _expected(weights: Path) -> tuple[np.ndarray, np.ndarray]:
    source = build_source("builtin:digits-cnn", weights=str(weights))
    feats = extract_features(source, load_data(DATA), progress=False)
    return feats.features, feats.targets


def _embed(out: Path, weights: Path, *extra: str) -> dict[str, object]:
    result = run_cli(
        "embed",
        DATA,
        "--source",
        "builtin:digits-cnn",
        "--weights",
        weights,
        "--out",
        out,
        "--cache-dir",
        out.parent / "cache",
        "--json",
        *extra,
    )
    assert result.code == 0, result.stderr
    return dict(result.json())


def test_npz_holds_features_labels_classes_items(tmp_path: Path, weights: Path) -> None:
    summary = _embed(tmp_path / "f.npz", weights)
    assert summary["n_items"] == 18 and summary["feature_cache_hit"] is False
    with np.load(tmp_path / "f.npz") as z:
        feats, labels = z["features"], z["labels"]
        assert list(z["classes"]) == ["0", "1", "2"]
        assert len(z["items"]) == 18
    want_f, want_y = _expected(weights)
    assert feats.dtype == np.float32 and feats.shape == want_f.shape
    np.testing.assert_allclose(feats, want_f, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(labels, want_y)
    # a second run comes from the feature cache, with the same numbers
    again = _embed(tmp_path / "g.npz", weights)
    assert again["feature_cache_hit"] is True
    with np.load(tmp_path / "g.npz") as z:
        np.testing.assert_array_equal(z["features"], feats)


def test_npy_with_labels_and_sidecar(tmp_path: Path, weights: Path) -> None:
    _embed(tmp_path / "f.npy", weights, "--no-feature-cache")
    feats = np.load(tmp_path / "f.npy")
    labels = np.load(tmp_path / "f.labels.npy")
    meta = json.loads((tmp_path / "f.json").read_text())
    want_f, want_y = _expected(weights)
    np.testing.assert_allclose(feats, want_f, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(labels, want_y)
    assert meta["classes"] == ["0", "1", "2"] and meta["shape"] == list(want_f.shape)
    assert not (tmp_path / "cache" / "features").exists()  # --no-feature-cache: nothing kept


def test_parquet(tmp_path: Path, weights: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    _embed(tmp_path / "f.parquet", weights)
    table = pq.read_table(tmp_path / "f.parquet")
    feats = np.stack(table.column("features").to_numpy(zero_copy_only=False))
    want_f, want_y = _expected(weights)
    np.testing.assert_allclose(feats, want_f, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(table.column("label_index").to_numpy(), want_y)


def test_refusals(tmp_path: Path, weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = ("embed", DATA, "--source", "builtin:digits-cnn", "--weights", weights)
    bad = run_cli(*base, "--out", tmp_path / "f.csv")
    assert bad.code == 1 and ".npz" in bad.stderr and "f.csv" in bad.stderr
    missing = run_cli(*base)
    assert missing.code == 1 and "--out" in missing.stderr
    (tmp_path / "taken.npz").write_bytes(b"x")
    taken = run_cli(*base, "--out", tmp_path / "taken.npz")
    assert taken.code == 1 and "--overwrite" in taken.stderr
    assert (tmp_path / "taken.npz").read_bytes() == b"x"
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    no_arrow = run_cli(*base, "--out", tmp_path / "f.parquet")
    assert no_arrow.code == 1 and "pyarrow" in no_arrow.stderr

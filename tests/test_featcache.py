"""The feature cache: the same head as the per-epoch loop, reuse, damage and the size cap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from headstart.api.fit import fit
from headstart.config.options import FitOptions
from headstart.data.images import load_data
from headstart.features.cache import (
    ENV_MAX_GB,
    View,
    cached_features,
    clear_features,
    features_dir,
    list_features,
)
from headstart.sources import build_source
from tests.conftest import run_cli, tiny_fit_options


def _head(run: Path) -> dict[str, torch.Tensor]:
    state = load_file(str(run / "model.safetensors"))
    return {k: v for k, v in state.items() if k.startswith("head.")}


def _meta(run: Path) -> dict[str, object]:
    return dict(json.loads((run / "headstart.json").read_text()))


@pytest.mark.parametrize("augment", ["none", "default"])
def test_cached_head_matches_the_per_epoch_loop(tmp_path: Path, augment: str) -> None:
    # dropout, label smoothing, warm-up + cosine per step, shuffling, a ragged last batch
    kw: dict[str, object] = dict(dropout=0.3, label_smoothing=0.1, warmup_epochs=1.0, seed=3)
    kw["solve_head"] = False  # the loop on cached features against the loop on images
    # "default": fit's own default (--augment auto), which is "none" for linear: the
    # command with and without --no-feature-cache trains the same head
    kw["augment"] = FitOptions.augment if augment == "default" else augment
    plain = fit(tiny_fit_options(tmp_path, "plain", feature_cache=False, **kw))
    cached = fit(tiny_fit_options(tmp_path, "cached", **kw))
    for run in (plain, cached):
        assert _meta(run.run_dir)["augmentation"]["applied"] == "none"  # type: ignore[index]
    a, b = _head(plain.run_dir), _head(cached.run_dir)
    assert a.keys() == b.keys() == {"head.weight", "head.bias"}
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    rows_a, rows_b = plain.history.rows(), cached.history.rows()
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert ra["lr_head"] == rb["lr_head"]
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-4)
        assert ra["val_acc"] == rb["val_acc"]
    assert plain.metrics["best_epoch"] == cached.metrics["best_epoch"]
    assert _meta(plain.run_dir)["feature_cache"] == {
        "used": False,
        "reason": "turned off (--no-feature-cache)",
    }
    info = _meta(cached.run_dir)["feature_cache"]
    assert isinstance(info, dict) and info["used"] is True and info["hit"] is False
    assert info["images_extracted"] == 60
    # the whole model is saved, backbone included, as for the per-epoch loop
    full_a = load_file(str(plain.run_dir / "model.safetensors"))
    full_b = load_file(str(cached.run_dir / "model.safetensors"))
    assert full_a.keys() == full_b.keys()
    for key in full_a:
        if key.startswith("backbone."):
            assert torch.equal(full_a[key], full_b[key]), key


def test_reused_across_runs_and_other_splits(tmp_path: Path) -> None:
    first = fit(tiny_fit_options(tmp_path, "a"))
    assert _meta(first.run_dir)["feature_cache"]["hit"] is False  # type: ignore[index]
    again = fit(tiny_fit_options(tmp_path, "b", lr=3e-3))
    info = _meta(again.run_dir)["feature_cache"]
    assert info["hit"] is True and info["images_extracted"] == 0  # type: ignore[index]
    # another split of the same images (as a cross-validation fold makes) is served too
    other = fit(tiny_fit_options(tmp_path, "c", val_fraction=0.5))
    assert _meta(other.run_dir)["feature_cache"]["hit"] is True  # type: ignore[index]
    # other random weights are another key
    seeded = fit(tiny_fit_options(tmp_path, "d", seed=1))
    assert _meta(seeded.run_dir)["feature_cache"]["hit"] is False  # type: ignore[index]
    # full fine-tuning does not use it
    full = fit(tiny_fit_options(tmp_path, "e", strategy="full", epochs=1))
    assert _meta(full.run_dir)["feature_cache"]["used"] is False  # type: ignore[index]
    assert len(list_features(tmp_path / "cache")) == 2


def test_augmented_views_are_cached_per_view(tmp_path: Path) -> None:
    result = fit(
        tiny_fit_options(tmp_path, "aug", augment="light", feature_cache_views=2, epochs=3)
    )
    info = _meta(result.run_dir)["feature_cache"]
    assert info["views"] == 2 and info["augmentation_applied"] is True  # type: ignore[index]
    entries = list_features(tmp_path / "cache")
    views = sorted(json.dumps(e.meta["view"], sort_keys=True) for e in entries)
    assert len(entries) == 3  # two training views and the validation images
    assert sum('"augment": "none"' in v for v in views) == 1
    assert _meta(result.run_dir)["augmentation"]["applied"] == "light, 2 cached view(s)"  # type: ignore[index]
    # with views 0 and augmentation on, the head sees un-augmented features: said so
    plain = fit(tiny_fit_options(tmp_path, "aug0", augment="light"))
    info0 = _meta(plain.run_dir)["feature_cache"]
    assert info0["augmentation_applied"] is False  # type: ignore[index]
    aug0 = _meta(plain.run_dir)["augmentation"]
    assert aug0["requested"] == "light" and aug0["applied"] == "none"  # type: ignore[index]
    assert "not applied" in aug0["why"]  # type: ignore[index]
    assert (
        "training augmentation: none (the feature cache"
        in (plain.run_dir / "report.md").read_text()
    )
    # without the cache, an explicit --augment light with linear augments, as before
    per_epoch = fit(tiny_fit_options(tmp_path, "aug-nc", augment="light", feature_cache=False))
    assert _meta(per_epoch.run_dir)["augmentation"]["applied"] == "light"  # type: ignore[index]


def test_views_differ_and_repeat(tmp_path: Path) -> None:
    data = load_data("builtin:digits?classes=0-1&per_class=4")
    source = build_source("builtin:digits-cnn", weights="none")
    dev = torch.device("cpu")
    cache = tmp_path / "c"
    v0 = View(augment="light", index=0, seed=0)
    v1 = View(augment="light", index=1, seed=0)
    a, hit_a = cached_features(source, data, v0, device=dev, cache=cache)
    b, _ = cached_features(source, data, v1, device=dev, cache=cache)
    assert not hit_a and not np.allclose(a, b)
    # a view of an image is the same whatever subset it is computed in
    sub = data.subset([3, 1])
    c, hit_c = cached_features(source, sub, v0, device=dev, cache=tmp_path / "other")
    assert not hit_c
    np.testing.assert_allclose(c, a[[3, 1]], rtol=1e-5, atol=1e-6)
    # global random state is untouched by extraction
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    cached_features(source, data, v0, device=dev, cache=tmp_path / "third")
    assert torch.equal(torch.rand(3), expected)


def test_damaged_entries_are_never_used(tmp_path: Path) -> None:
    data = load_data("builtin:digits?classes=0-1&per_class=4")
    source = build_source("builtin:digits-cnn", weights="none")
    dev = torch.device("cpu")
    good, _ = cached_features(source, data, device=dev, cache=tmp_path)
    (entry,) = list_features(tmp_path)
    # truncate the data file: the sidecar no longer matches, so it is a miss, then rebuilt
    raw = entry.path.read_bytes()
    entry.path.write_bytes(raw[: len(raw) // 2])
    assert list_features(tmp_path) == []
    again, hit = cached_features(source, data, device=dev, cache=tmp_path)
    assert not hit
    np.testing.assert_array_equal(again, good)
    # an entry without its sidecar (a write that died before the end) is not an entry
    (entry,) = list_features(tmp_path)
    entry.sidecar.unlink()
    assert list_features(tmp_path) == []
    _, hit = cached_features(source, data, device=dev, cache=tmp_path)
    assert not hit


def test_size_cap_evicts_least_recently_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = build_source("builtin:digits-cnn", weights="none")
    dev = torch.device("cpu")
    sets = [load_data(f"builtin:digits?classes={c}-{c + 1}&per_class=40") for c in (0, 2, 4)]
    monkeypatch.setenv(ENV_MAX_GB, str(2.5 * 80 * (source.feature_dim * 4 + 32) / 2**30))
    for data in sets:
        cached_features(source, data, device=dev, cache=tmp_path)
    names = [e.meta["data"] for e in list_features(tmp_path)]
    assert names == [sets[1].spec, sets[2].spec]
    monkeypatch.setenv(ENV_MAX_GB, "lots")
    with pytest.raises(Exception, match=ENV_MAX_GB):
        cached_features(source, sets[0], device=dev, cache=tmp_path)


def test_cache_list_and_clear_show_features(tmp_path: Path) -> None:
    data = load_data("builtin:digits?classes=0-1&per_class=4")
    source = build_source("builtin:digits-cnn", weights="none")
    cached_features(source, data, device=torch.device("cpu"), cache=tmp_path)
    listed = run_cli("cache", "list", "--cache-dir", tmp_path, "--json")
    assert listed.code == 0, listed.stderr
    (feat,) = listed.json()["features"]
    assert feat["shape"] == [8, source.feature_dim] and feat["source"] == "builtin:digits-cnn"
    human = run_cli("cache", "list", "--cache-dir", tmp_path)
    assert "features/" in human.stdout
    refused = run_cli("cache", "clear", "--cache-dir", tmp_path)
    assert refused.code == 1 and features_dir(tmp_path).is_dir()
    cleared = run_cli("cache", "clear", "--cache-dir", tmp_path, "--yes")
    assert cleared.code == 0, cleared.stderr
    assert not features_dir(tmp_path).exists() and clear_features(tmp_path) == []


def test_bad_views_flag(tmp_path: Path) -> None:
    result = run_cli(
        "fit",
        "builtin:digits?classes=0-1&per_class=5",
        "--source",
        "builtin:digits-cnn",
        "--weights",
        "none",
        "--feature-cache-views",
        "-1",
        "--out",
        tmp_path / "x",
    )
    assert result.code == 1 and "--feature-cache-views" in result.stderr

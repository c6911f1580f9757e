"""partial:K with its frozen prefix cached: the same training as the per-epoch loop, reuse
per prefix, a fallback (with its reason) when the prefix cannot or should not be cached,
and a resumable, ordinary run."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import headstart.train.loop as train_module
from headstart.api.fit import fit
from headstart.api.predict import evaluate
from headstart.config.options import FitOptions
from headstart.export import export
from headstart.features.cache import ENV_MAX_GB, list_features
from headstart.plan.make import Plan, make_plan
from headstart.sources.base import Backbone, assign_by_prefix
from headstart.sources.target import TargetModel
from headstart.train.checkpoint import checkpoint_dir
from headstart.train.prefix import Split, find_split
from tests.conftest import run_cli, tiny_fit_options


def _options(tmp_path: Path, name: str, **kw: object) -> FitOptions:
    return tiny_fit_options(tmp_path, name, **{"strategy": "partial:2", **kw})


def _meta(run: Path) -> dict[str, object]:
    return dict(json.loads((run / "headstart.json").read_text()))


def _info(run: Path) -> dict[str, object]:
    info = _meta(run)["feature_cache"]
    assert isinstance(info, dict)
    return info


@pytest.mark.parametrize("strategy", ["partial:1", "partial:2"])
def test_cached_prefix_trains_as_the_per_epoch_loop(tmp_path: Path, strategy: str) -> None:
    # dropout, label smoothing, warm-up + cosine, shuffling, a ragged last batch, BatchNorm
    # in the trainable stages (its running statistics move)
    kw = dict(strategy=strategy, dropout=0.3, label_smoothing=0.1, seed=3)
    plain = fit(_options(tmp_path, "plain", feature_cache=False, **kw))
    cached = fit(_options(tmp_path, "cached", **kw))
    a = load_file(str(plain.run_dir / "model.safetensors"))
    b = load_file(str(cached.run_dir / "model.safetensors"))
    assert a.keys() == b.keys()  # the whole target model, backbone included
    moved = 0
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
        moved += "block3" in key and "running_mean" in key
    assert moved  # the trainable stages' BatchNorm statistics were saved
    for ra, rb in zip(plain.history.rows(), cached.history.rows(), strict=True):
        assert ra["lr_backbone"] == rb["lr_backbone"] > 0
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-5)
        assert ra["val_loss"] == pytest.approx(rb["val_loss"], rel=1e-5)
        assert ra["val_acc"] == rb["val_acc"]
    assert plain.metrics["best_epoch"] == cached.metrics["best_epoch"]
    assert _info(plain.run_dir) == {"used": False, "reason": "turned off (--no-feature-cache)"}
    info = _info(cached.run_dir)
    assert info["used"] is True and info["hit"] is False and info["images_extracted"] == 60
    k = int(strategy.split(":")[1])
    prefix = info["prefix"]
    assert isinstance(prefix, dict)
    assert prefix["frozen_stages"] == ["stem", "block1"][:k]
    assert prefix["item_shape"] == [32, 8, 8]
    # an ordinary run: evaluate and predict load it as the whole model
    scored = evaluate(cached.run_dir, "builtin:digits?classes=0-2&per_class=20")
    again = evaluate(plain.run_dir, "builtin:digits?classes=0-2&per_class=20")
    assert scored.accuracy == again.accuracy
    exported = export(cached.run_dir, format="torchscript")
    assert exported.max_abs_diff < 1e-5


def test_each_prefix_is_kept_apart_and_reused(tmp_path: Path) -> None:
    first = fit(_options(tmp_path, "a", strategy="partial:1"))
    assert _info(first.run_dir)["hit"] is False
    second = fit(_options(tmp_path, "b", strategy="partial:2"))
    assert _info(second.run_dir)["hit"] is False  # another prefix: nothing shared
    linear = fit(_options(tmp_path, "c", strategy="linear"))
    assert _info(linear.run_dir)["hit"] is False
    # each is reused: another run, another learning rate, another split of the same images
    for name, strategy, extra in [
        ("d", "partial:1", {"lr": 3e-3}),
        ("e", "partial:2", {"val_fraction": 0.5}),
        ("f", "linear", {}),
    ]:
        run = fit(_options(tmp_path, name, strategy=strategy, **extra))  # type: ignore[arg-type]
        info = _info(run.run_dir)
        assert info["hit"] is True and info["images_extracted"] == 0, (strategy, info)
    entries = list_features(tmp_path / "cache")
    parts = sorted(
        json.dumps(e.meta.get("part", {}).get("frozen_stages"), sort_keys=True) for e in entries
    )
    assert parts == ['["stem", "block1"]', '["stem"]', "null"]
    listed = run_cli("cache", "list", "--cache-dir", tmp_path / "cache", "--json")
    assert listed.code == 0, listed.stderr
    shapes = sorted(f["shape"][1] for f in listed.json()["features"])
    assert shapes == [128, 32 * 8 * 8, 32 * 8 * 8]


def test_too_large_for_the_cap_runs_every_epoch_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 60 images x 32x8x8 floats = 480 KB; the cap is 100 KB
    monkeypatch.setenv(ENV_MAX_GB, str(100 * 1024 / 2**30))
    run = fit(_options(tmp_path, "big", seed=1))
    info = _info(run.run_dir)
    assert info["used"] is False
    reason = str(info["reason"])
    assert ENV_MAX_GB in reason and "32x8x8" in reason and "GB" in reason
    assert list_features(tmp_path / "cache") == []  # nothing was computed or written
    monkeypatch.delenv(ENV_MAX_GB)
    plain = fit(_options(tmp_path, "plain", seed=1, feature_cache=False))
    for key, value in plain.model.state_dict().items():
        assert torch.equal(value, run.model.state_dict()[key]), key


def test_too_large_for_memory_runs_every_epoch_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import headstart.train.cached_head as headtrain

    monkeypatch.setattr(headtrain, "memory_limit", lambda: 100 * 1024)
    run = fit(_options(tmp_path, "big", epochs=1))
    info = _info(run.run_dir)
    assert info["used"] is False and "memory" in str(info["reason"])
    assert list_features(tmp_path / "cache") == []


class _Skip(nn.Module):
    """stem (two convolutions) -> drop -> block, plus optionally a skip from inside the
    frozen stem to the end (across any cut after the stem)."""

    def __init__(self, skip: bool, p: float) -> None:
        super().__init__()
        self.stem0 = nn.Conv2d(1, 4, 3, padding=1)
        self.stem1 = nn.Conv2d(4, 4, 3, padding=1)
        self.drop = nn.Dropout(p)
        self.block = nn.Conv2d(4, 4, 3, padding=1)
        self.skip = skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.stem0(x)
        y = self.block(self.drop(self.stem1(a)))
        return (y + a if self.skip else y).mean(dim=(2, 3))


def _model(body: nn.Module) -> tuple[TargetModel, Plan]:
    names, assignment = assign_by_prefix(body, [("stem", ["stem0", "stem1"]), ("block", ["block"])])
    backbone = Backbone(body, stage_names=names, assignment=assignment, feature_dim=4)
    return TargetModel(backbone, 2), make_plan("partial:1", names)


def _split(body: nn.Module) -> Split | str:
    return find_split(*_model(body), (1, 6, 6))


def test_a_cut_that_would_change_training_is_not_used() -> None:
    # the frozen stem's output reaches the end by another way than the cut: no cut works
    reason = _split(_Skip(skip=True, p=0.0))
    assert isinstance(reason, str) and "stem" in reason
    # a dropout between the frozen and trainable stages stays on the trainable side
    split = _split(_Skip(skip=False, p=0.5))
    assert isinstance(split, Split) and split.boundary == "stem1"
    # a dropout that does nothing may be cached with the prefix
    split = _split(_Skip(skip=False, p=0.0))
    assert isinstance(split, Split) and split.boundary == "drop"
    # the random state and the modules' modes are left as they were
    model, plan = _model(_Skip(skip=False, p=0.5))
    model.train()
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    assert isinstance(find_split(model, plan, (1, 6, 6)), Split)
    assert torch.equal(torch.rand(2), expected)
    assert all(m.training for m in model.modules())


def test_unsplittable_backbone_falls_back_in_a_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import headstart.train.cached_head as headtrain

    monkeypatch.setattr(headtrain, "find_split", lambda *a: "no cut for this test")
    run = fit(_options(tmp_path, "x", epochs=1))
    assert _info(run.run_dir) == {"used": False, "reason": "no cut for this test"}


class Stop(Exception):
    pass


def test_interrupted_cached_partial_fit_resumes_bit_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = _options(tmp_path, "whole", dropout=0.2, checkpoint_every=2, seed=2)
    whole = fit(options)
    out = tmp_path / "run"

    def hook(name: str) -> None:
        if name == "step:14":  # epoch 3 of 3, after the step-12 checkpoint
            raise Stop(name)

    monkeypatch.setattr(train_module, "kill_point", hook)
    with pytest.raises(Stop):
        fit(replace(options, out=str(out)))
    monkeypatch.undo()
    assert not out.exists() and checkpoint_dir(out).is_dir()
    resumed = fit(FitOptions(resume=str(out), progress=False))
    assert _info(resumed.run_dir)["hit"] is True
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert resumed.history.rows()[-1]["train_loss"] == whole.history.rows()[-1]["train_loss"]
    assert [r["val_loss"] for r in resumed.history.rows()] == [
        r["val_loss"] for r in whole.history.rows()
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("spec", "cuts"),
    [
        ("timm:resnet18", {1: ("maxpool", [64, 8, 8]), 3: ("layer2", [128, 4, 4])}),
        ("timm:vit_tiny_patch16_224", {1: ("norm_pre", [5, 192]), 3: ("blocks.1", [5, 192])}),
    ],
)
def test_zoo_backbones_are_cut_after_their_frozen_stages(
    spec: str, cuts: dict[int, tuple[str, list[int]]]
) -> None:
    from headstart.sources.base import BuildOptions, build_source

    source = build_source(spec, weights="none", options=BuildOptions(image_size=32))
    for k, (boundary, shape) in cuts.items():
        plan = make_plan(f"partial:{k}", source.stage_names)
        split = find_split(TargetModel(source.backbone, 3), plan, source.preprocessing.input_size)
        assert isinstance(split, Split), split
        assert (split.boundary, list(split.item_shape)) == (boundary, shape)


def test_lora_on_images_is_not_trained_on_cached_features(tmp_path: Path) -> None:
    # its adapters sit inside the frozen backbone: cached features would leave them untrained
    run = fit(_options(tmp_path, "lora", strategy="lora", lora_targets="block3.0", epochs=1))
    assert _info(run.run_dir) == {
        "used": False,
        "reason": "strategy lora trains adapters inside the backbone",
    }


def test_augmentation_as_for_linear(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = fit(_options(tmp_path, "views", augment="light", feature_cache_views=2, epochs=2))
    info = _info(run.run_dir)
    assert info["views"] == 2 and info["augmentation_applied"] is True
    entries = list_features(tmp_path / "cache")
    assert len(entries) == 3 and all(e.meta["part"]["cut_after"] == "block1" for e in entries)
    assert sorted(e.meta["view"].get("index", -1) for e in entries) == [-1, 0, 1]
    # without views the per-epoch loop runs, augmented as asked (unlike linear, whose
    # cache holds un-augmented features: partial:K's default augmentation is light)
    plain = fit(_options(tmp_path, "views0", augment="light", epochs=1))
    info = _info(plain.run_dir)
    assert info["used"] is False and "--feature-cache-views K" in info["reason"]
    assert len(list_features(tmp_path / "cache")) == 3  # nothing more cached


def test_head_epochs_on_a_cached_prefix_train_as_the_per_epoch_loop(tmp_path: Path) -> None:
    """--head-epochs with a cached prefix: the head-only epoch leaves the trainable stages
    (and their BatchNorm statistics) alone there too, then both train the same way."""
    # the head-only epoch trained by the loop (not solved): the loop on both paths
    kw = dict(strategy="partial:1", head_epochs=1, seed=1, solve_head=False)
    plain = fit(_options(tmp_path, "plain", feature_cache=False, **kw))
    cached = fit(_options(tmp_path, "cached", **kw))
    assert _info(cached.run_dir)["used"] is True
    a = load_file(str(plain.run_dir / "model.safetensors"))
    b = load_file(str(cached.run_dir / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    rows = [(r["lr_backbone"], r["val_acc"]) for r in cached.history.rows()]
    assert rows == [(r["lr_backbone"], r["val_acc"]) for r in plain.history.rows()]
    assert rows[0][0] == 0.0 and rows[1][0] > 0

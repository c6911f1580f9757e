"""The source contract, run over every registered family with tiny inputs.

(timm's ``test_models.py`` is the model: one set of checks, every adapter.)  The zoo
families are covered model by model in ``test_sources_zoo.py``; here every family,
including ``builtin`` and ``file``, goes through the same contract.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from headstart.errors import SourceError, WeightsError
from headstart.rundir import write_run
from headstart.sources import ADAPTERS, BuildOptions, Source, build_source
from headstart.sources.target import TargetModel


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run dir as `pretrain` writes it (weights made up, no training needed)."""
    torch.manual_seed(0)
    source = build_source("builtin:small-cnn", weights="none")
    for p in source.backbone.parameters():
        p.data.normal_()
    model = TargetModel(source.backbone, 4)
    meta = {
        "kind": "pretrain",
        "source": source.describe(),
        "classes": ["a", "b", "c", "d"],
        "preprocessing": source.preprocessing.with_image_size(24).to_dict(),
        "plan": {"strategy": "scratch"},
        "data": {"spec": "somewhere"},
    }
    return write_run(
        tmp_path_factory.mktemp("runs") / "pre", model=model, meta=meta, metrics_rows=[]
    )


CASES = {
    "builtin": [("builtin:digits-cnn", None), ("builtin:small-cnn", None)],
    "timm": [("timm:resnet18", 32)],
    "torchvision": [("torchvision:resnet18", 32)],
    "file": [("file:RUN", None)],
    "hf": [("hf:TINY_VIT", None)],  # text models: tests/test_sources_hf.py
}


def _cases() -> list[tuple[str, int | None]]:
    return [case for family in sorted(CASES) for case in CASES[family]]


def test_every_family_has_a_contract_case() -> None:
    assert sorted(CASES) == ADAPTERS.names()


def _build(
    spec: str, size: int | None, run_dir: Path, weights: str = "none", tiny_vit: Path | None = None
) -> Source:
    if spec == "hf:TINY_VIT":
        return build_source(
            f"hf:{tiny_vit}", weights=weights, options=BuildOptions(image_size=size)
        )
    if spec == "file:RUN":
        return build_source(f"file:{run_dir}", options=BuildOptions(image_size=size))
    return build_source(spec, weights=weights, options=BuildOptions(image_size=size))


@pytest.mark.parametrize(("spec", "size"), _cases(), ids=[c[0] for c in _cases()])
def test_source_contract(spec: str, size: int | None, run_dir: Path, tiny_vit: Path) -> None:
    source = _build(spec, size, run_dir, tiny_vit=tiny_vit)
    backbone = source.backbone
    # ordered, named stages that cover every parameter exactly once
    assert len(backbone.stage_names) >= 2
    assert len(set(backbone.stage_names)) == len(backbone.stage_names)
    names = [n for n, _ in backbone.body.named_parameters()]
    stages = [backbone.stage_of(n) for n in names]
    assert stages[0] == 0 and stages[-1] == backbone.num_stages - 1
    assert stages == sorted(stages), "stages are not in forward order"
    covered = backbone.stage_parameters(range(backbone.num_stages))
    assert len(covered) == len(names)
    # preprocessing fits the model, and a forward pass gives feature_dim features
    pre = source.preprocessing
    assert len(pre.mean) == len(pre.std) == pre.channels
    x = torch.randn(2, *pre.input_size)
    backbone.eval()
    with torch.no_grad():
        out = backbone(x)
    assert out.shape == (2, source.feature_dim)
    # the old output layer is gone from the backbone, and kept aside (a transformers
    # AutoModel is an encoder without one)
    if spec.startswith("hf:"):
        assert source.old_head is None
    else:
        assert source.old_head is not None
        head_out = [m.out_features for m in source.old_head.modules() if isinstance(m, nn.Linear)]
        assert head_out, "the old output layer was not kept"
        assert all(m is not source.old_head for m in backbone.modules())
    # the target model = backbone + a new head sized to the target
    model = TargetModel(backbone, 7)
    with torch.no_grad():
        assert model(x).shape == (2, 7)
    # the description is JSON-friendly and names the architecture that rebuilds it
    described = source.describe()
    assert described["stages"] == list(backbone.stage_names)
    rebuilt = build_source(
        described["arch"], weights="none", options=BuildOptions(**described["arch_options"])
    )
    assert rebuilt.backbone.stage_names == backbone.stage_names


def test_file_source_brings_weights_classes_and_preprocessing(run_dir: Path) -> None:
    source = build_source(f"file:{run_dir}")
    saved = TargetModel(build_source("builtin:small-cnn", weights="none").backbone, 4)
    from safetensors.torch import load_file

    saved.load_state_dict(load_file(str(run_dir / "model.safetensors")))
    for (name, mine), (_, theirs) in zip(
        source.backbone.state_dict().items(), saved.backbone.state_dict().items(), strict=True
    ):
        assert torch.equal(mine, theirs), name
    assert source.weights.source_classes == ("a", "b", "c", "d")
    assert source.weights.pretrained and source.weights.sha256
    assert source.preprocessing.input_size == (3, 24, 24)
    assert isinstance(source.old_head, nn.Linear) and source.old_head.out_features == 4
    assert torch.equal(source.old_head.weight, saved.head.weight)
    # the model file alone works too: the architecture is in its header
    alone = build_source(f"file:{run_dir / 'model.safetensors'}")
    assert alone.arch == "builtin:small-cnn"


def test_file_source_errors(tmp_path: Path, run_dir: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        build_source(f"file:{tmp_path / 'nope'}")
    with pytest.raises(SourceError, match="not a headstart run dir"):
        build_source(f"file:{tmp_path}")
    plain = tmp_path / "plain.pth"
    torch.save(nn.Linear(2, 2).state_dict(), plain)
    with pytest.raises(SourceError, match="--arch"):
        build_source(f"file:{plain}")
    with pytest.raises(SourceError, match="brings its own weights"):
        build_source(f"file:{run_dir}", weights="none")


def test_file_source_with_arch_loads_a_zoo_state_dict(tmp_path: Path) -> None:
    zoo = build_source("builtin:small-cnn", weights="none")
    full = {
        **zoo.backbone.body.state_dict(),
        "fc.weight": torch.ones(3, 256),
        "fc.bias": torch.zeros(3),
    }
    path = tmp_path / "cnn.pth"
    torch.save(full, path)
    source = build_source(f"file:{path}", options=BuildOptions(extra={"arch": "builtin:small-cnn"}))
    assert sorted(source.weights.dropped_keys) == ["fc.bias", "fc.weight"]
    assert isinstance(source.old_head, nn.Linear) and source.old_head.out_features == 3


def test_builtin_default_weights_are_made_once_and_cached(tmp_path: Path) -> None:
    from headstart.train.assemble import make_default_weights

    # The sources cannot train: without the trainer's maker, missing defaults are an error
    # that says how to get them, and nothing is written.
    with pytest.raises(WeightsError, match="not built yet"):
        build_source("builtin:digits-cnn", options=BuildOptions(cache_dir=str(tmp_path)))
    assert not list(tmp_path.iterdir())
    options = BuildOptions(cache_dir=str(tmp_path), make_weights=make_default_weights)
    first = build_source("builtin:digits-cnn", options=options)
    cached = list(tmp_path.glob("*.safetensors"))
    assert len(cached) == 1
    assert first.weights.pretrained and first.weights.source_classes == ("0", "1", "2", "3", "4")
    mtime = cached[0].stat().st_mtime_ns
    second = build_source("builtin:digits-cnn", options=options)
    assert cached[0].stat().st_mtime_ns == mtime
    for a, b in zip(first.backbone.parameters(), second.backbone.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(WeightsError, match="no default weights"):
        build_source("builtin:small-cnn", options=options)

"""The zoo adapters (``timm``, ``torchvision``) obey the source contract.

Random weights and 32x32 inputs only: nothing is downloaded.  Weights files are made
here from randomly initialised models, in the layouts people actually save.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from headstart._io import sha256_file
from headstart.errors import SourceError, WeightsError
from headstart.sources.base import BuildOptions, Source, SourceAdapter
from headstart.sources.timm_ import TimmAdapter
from headstart.sources.torchvision_ import TorchvisionAdapter

ADAPTERS: dict[str, SourceAdapter] = {"timm": TimmAdapter(), "torchvision": TorchvisionAdapter()}
IMAGENET_MEAN = (0.485, 0.456, 0.406)

CASES = [
    ("timm", "resnet18"),
    ("timm", "mobilenetv3_small_050"),
    ("timm", "efficientnet_b0"),
    ("timm", "convnext_atto"),
    ("timm", "vit_tiny_patch16_224"),
    ("torchvision", "resnet18"),
    ("torchvision", "mobilenet_v3_small"),
    ("torchvision", "efficientnet_b0"),
    ("torchvision", "densenet121"),
    ("torchvision", "convnext_tiny"),
    ("torchvision", "regnet_x_400mf"),
    ("torchvision", "shufflenet_v2_x0_5"),
    ("torchvision", "vit_b_16"),
    ("torchvision", "swin_t"),
]
IDS = [f"{family}:{name}" for family, name in CASES]

# The expected layouts, spelled out, for the families people use most.
STAGES = {
    ("timm", "resnet18"): ("stem", "layer1", "layer2", "layer3", "layer4"),
    ("torchvision", "resnet18"): ("stem", "layer1", "layer2", "layer3", "layer4"),
    ("torchvision", "regnet_x_400mf"): ("stem", *(f"trunk_output.block{i}" for i in range(1, 5))),
    ("torchvision", "shufflenet_v2_x0_5"): ("stem", "stage2", "stage3", "stage4", "conv5"),
    ("torchvision", "vit_b_16"): (
        "embed",
        *(f"encoder.layers.encoder_layer_{i}" for i in range(12)),
        "encoder.ln",
    ),
}


def options(tmp: Path | None = None) -> BuildOptions:
    return BuildOptions(image_size=32, cache_dir=str(tmp) if tmp else None)


def build(family: str, name: str) -> Source:
    torch.manual_seed(0)
    source = ADAPTERS[family].build(name, weights="none", options=options())
    source.backbone.eval()
    return source


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def case(request: pytest.FixtureRequest) -> tuple[str, str, Source]:
    """Each model built once; pytest runs its tests together, then lets it go."""
    family, name = request.param
    return family, name, build(family, name)


def zoo_mean(family: str, name: str) -> tuple[float, ...]:
    if family == "timm":
        return tuple(timm.models.get_pretrained_cfg(name).mean)
    return tuple(torchvision.models.get_model_weights(name).DEFAULT.transforms().mean)


# --------------------------------------------------------------------------- contract


def test_stages_cover_every_tensor_once_in_forward_order(case: tuple[str, str, Source]) -> None:
    family, name, source = case
    backbone = source.backbone
    names = source.stage_names
    assert names and len(set(names)) == len(names)
    if (family, name) in STAGES:
        assert names == STAGES[family, name]

    params = [n for n, _ in backbone.body.named_parameters()]
    per_stage = [{n for n, _ in backbone.stage_parameters([i])} for i in range(backbone.num_stages)]
    assert sum(len(s) for s in per_stage) == len(params)
    assert set().union(*per_stage) == set(params)
    assert all(per_stage), "every stage holds parameters"
    for buffer, _ in backbone.body.named_buffers():
        assert 0 <= backbone.stage_of(buffer) < backbone.num_stages

    order = [backbone.stage_of(n) for n in params]
    assert order[0] == 0 and order[-1] == backbone.num_stages - 1
    assert order == sorted(order), "stages follow the forward order"


def test_forward_gives_feature_vectors(case: tuple[str, str, Source]) -> None:
    _, _, source = case
    assert source.preprocessing.input_size == (3, 32, 32)
    with torch.no_grad():
        out = source.backbone(torch.randn(2, *source.preprocessing.input_size))
    assert out.shape == (2, source.feature_dim)
    assert torch.isfinite(out).all()


def test_old_head_removed_and_kept(case: tuple[str, str, Source]) -> None:
    _, _, source = case
    left = [
        m for m in source.backbone.modules() if isinstance(m, nn.Linear) and m.out_features == 1000
    ]
    assert not left
    assert isinstance(source.old_head, nn.Linear)
    assert source.old_head.out_features == 1000
    assert source.old_head.in_features == source.feature_dim
    assert source.weights.pretrained is False
    assert source.weights.description == "random initialisation"


def test_preprocessing_and_description(case: tuple[str, str, Source]) -> None:
    family, name, source = case
    pre = source.preprocessing
    assert pre.channels == 3 and len(pre.mean) == 3 and len(pre.std) == 3
    assert pre.mean == pytest.approx(zoo_mean(family, name))
    assert 0.5 < pre.crop_pct <= 1.0
    assert pre.interpolation in ("bilinear", "bicubic")
    assert source.spec == source.arch == f"{family}:{name}"
    assert source.arch_options == {"image_size": 32}
    desc = json.loads(json.dumps(source.describe()))
    assert desc["feature_dim"] == source.feature_dim
    assert desc["stages"] == list(source.stage_names)


def test_known_preprocessing_values() -> None:
    resnet = build("torchvision", "resnet18").preprocessing
    assert resnet.mean == pytest.approx(IMAGENET_MEAN)
    assert resnet.std == pytest.approx((0.229, 0.224, 0.225))
    assert resnet.crop_pct == pytest.approx(224 / 256)
    assert build("timm", "vit_tiny_patch16_224").preprocessing.mean == pytest.approx((0.5,) * 3)
    assert build("torchvision", "efficientnet_b0").preprocessing.interpolation == "bicubic"


def test_first_stage_keeps_its_batchnorm(case: tuple[str, str, Source]) -> None:
    _, _, source = case
    backbone = source.backbone
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in backbone.modules())
    first = backbone.stage_modules([0])
    assert first, "stage 0 owns whole modules"
    if has_bn:
        assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in first)
    assert backbone.body not in first  # stage 0 is not the whole model


def test_timm_feature_dim_is_what_forward_returns() -> None:
    # mobilenetv3 has a 1x1 conv after pooling: the features are 1024-wide, not 288.
    assert build("timm", "mobilenetv3_small_050").feature_dim == 1024


# --------------------------------------------------------------------------- weights files

SMALL = [("timm", "mobilenetv3_small_050"), ("torchvision", "shufflenet_v2_x0_5")]
SMALL_IDS = [f"{f}:{n}" for f, n in SMALL]
HEAD = {"timm": ("classifier.weight", "classifier.bias"), "torchvision": ("fc.weight", "fc.bias")}


def full_model(family: str, name: str, num_classes: int = 1000) -> nn.Module:
    torch.manual_seed(1)
    if family == "timm":
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def assert_loaded(source: Source, saved: dict[str, torch.Tensor], head: tuple[str, ...]) -> None:
    body = source.backbone.body.state_dict()
    assert body, "the body has tensors"
    for key, value in body.items():
        assert torch.equal(value, saved[key]), key
    assert set(source.weights.dropped_keys) == set(head)
    assert source.weights.missing_keys == ()
    assert source.weights.unexpected_keys == ()
    assert isinstance(source.old_head, nn.Linear)
    assert torch.equal(source.old_head.weight, saved[head[0]])


@pytest.mark.parametrize(("family", "name"), SMALL, ids=SMALL_IDS)
def test_weights_file_round_trip(family: str, name: str, tmp_path: Path) -> None:
    saved = {k: v.clone() for k, v in full_model(family, name).state_dict().items()}
    files = {
        "plain.pth": saved,
        "module.pth": {f"module.{k}": v for k, v in saved.items()},
        "wrapped.pth": {"state_dict": saved, "epoch": 3},
    }
    for filename, obj in files.items():
        torch.save(obj, tmp_path / filename)
    save_file(saved, str(tmp_path / "model.safetensors"))
    for filename in [*files, "model.safetensors"]:
        path = tmp_path / filename
        source = ADAPTERS[family].build(name, weights=str(path), options=options(tmp_path))
        assert_loaded(source, saved, HEAD[family])
        assert source.weights.pretrained is True
        assert source.weights.spec == str(path)
        assert source.weights.path == str(path)
        assert source.weights.sha256 == sha256_file(path)
        assert source.weights.source_classes is None
        with torch.no_grad():
            out = source.backbone.eval()(torch.randn(2, 3, 32, 32))
        assert out.shape == (2, source.feature_dim)


@pytest.mark.parametrize(("family", "name"), SMALL, ids=SMALL_IDS)
def test_checkpoint_with_other_classes_loads_without_its_head(
    family: str, name: str, tmp_path: Path
) -> None:
    saved = full_model(family, name, num_classes=10).state_dict()
    torch.save(saved, tmp_path / "ten.pth")
    source = ADAPTERS[family].build(name, weights=str(tmp_path / "ten.pth"), options=options())
    assert_loaded(source, saved, HEAD[family])
    assert isinstance(source.old_head, nn.Linear)
    assert source.old_head.out_features == 10


def test_file_for_another_architecture_is_refused(tmp_path: Path) -> None:
    torch.save(full_model("torchvision", "shufflenet_v2_x0_5").state_dict(), tmp_path / "s.pth")
    with pytest.raises(WeightsError, match="none of its"):
        ADAPTERS["timm"].build(
            "mobilenetv3_small_050", weights=str(tmp_path / "s.pth"), options=options()
        )
    # same family, other widths: every shape differs, and the message says which
    with pytest.raises(WeightsError, match="does not fit"):
        ADAPTERS["torchvision"].build(
            "shufflenet_v2_x1_0", weights=str(tmp_path / "s.pth"), options=options()
        )


def test_missing_keys_are_an_error_and_strict_refuses_unexpected_ones(tmp_path: Path) -> None:
    saved = full_model("torchvision", "shufflenet_v2_x0_5").state_dict()
    partial = {k: v for k, v in saved.items() if not k.startswith("conv5.")}
    torch.save(partial, tmp_path / "partial.pth")
    # a layer left random in a model called pretrained: an error that names it
    with pytest.raises(WeightsError, match=r"missing from the file: conv5\.0\.weight"):
        ADAPTERS["torchvision"].build(
            "shufflenet_v2_x0_5", weights=str(tmp_path / "partial.pth"), options=options()
        )
    torch.save({**saved, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    path = str(tmp_path / "extra.pth")
    source = ADAPTERS["torchvision"].build("shufflenet_v2_x0_5", weights=path, options=options())
    assert source.weights.unexpected_keys == ("extra.weight",)  # only a warning
    with pytest.raises(WeightsError, match="strict"):
        ADAPTERS["torchvision"].build(
            "shufflenet_v2_x0_5", weights=path, options=BuildOptions(image_size=32, strict=True)
        )


def test_torchvision_densenet_old_key_names_load(tmp_path: Path) -> None:
    # The zoo's DenseNet files name layers "norm.1" where the model has "norm1".
    saved = full_model("torchvision", "densenet121").state_dict()
    old = {
        k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v for k, v in saved.items()
    }
    assert old.keys() != saved.keys()
    torch.save(old, tmp_path / "densenet.pth")
    source = ADAPTERS["torchvision"].build(
        "densenet121", weights=str(tmp_path / "densenet.pth"), options=options()
    )
    assert_loaded(source, saved, ("classifier.weight", "classifier.bias"))


def test_torchvision_mnasnet_loads_from_safetensors(tmp_path: Path) -> None:
    # MNASNet refuses a state dict without module versions (safetensors has none).
    saved = full_model("torchvision", "mnasnet0_5").state_dict()
    save_file(dict(saved), str(tmp_path / "mnasnet.safetensors"))
    source = ADAPTERS["torchvision"].build(
        "mnasnet0_5", weights=str(tmp_path / "mnasnet.safetensors"), options=options()
    )
    assert_loaded(source, saved, ("classifier.1.weight", "classifier.1.bias"))


def test_timm_vit_weights_for_another_image_size_are_resampled(tmp_path: Path) -> None:
    saved = full_model("timm", "vit_tiny_patch16_224").state_dict()  # 224: 14x14 patches
    save_file(dict(saved), str(tmp_path / "vit.safetensors"))
    source = ADAPTERS["timm"].build(
        "vit_tiny_patch16_224", weights=str(tmp_path / "vit.safetensors"), options=options()
    )
    body = source.backbone.body.state_dict()
    assert body["pos_embed"].shape == (1, 1 + 2 * 2, 192)
    assert torch.equal(body["blocks.0.attn.qkv.weight"], saved["blocks.0.attn.qkv.weight"])
    assert set(source.weights.dropped_keys) == {"head.weight", "head.bias"}


# --------------------------------------------------------------------------- names, default


@pytest.mark.parametrize(
    ("family", "name", "close"),
    [
        ("timm", "resnet181", "resnet18"),
        ("timm", "resnet18.no_such_tag", "resnet18.a1_in1k"),
        ("torchvision", "resnet19", "resnet18"),
        ("torchvision", "mobilenet_v3_smal", "mobilenet_v3_small"),
    ],
)
def test_unknown_names_list_close_ones(family: str, name: str, close: str) -> None:
    with pytest.raises(SourceError, match=f"unknown {family} model") as info:
        ADAPTERS[family].build(name, weights="none", options=options())
    assert close in str(info.value)


def test_names() -> None:
    assert "resnet18" in ADAPTERS["timm"].names()
    tv = ADAPTERS["torchvision"].names()
    assert {"resnet18", "vit_b_16", "swin_t"} <= set(tv)
    assert not [n for n in tv if n.startswith(("squeezenet", "fasterrcnn", "deeplab", "raft"))]


def test_torchvision_googlenet_without_auxiliary_heads(tmp_path: Path) -> None:
    # Its zoo file has the auxiliary classifiers: they go with the old output layer.
    torch.manual_seed(0)
    full = torchvision.models.get_model("googlenet", weights=None, init_weights=True)
    torch.save(full.state_dict(), tmp_path / "googlenet.pth")
    source = ADAPTERS["torchvision"].build(
        "googlenet", weights=str(tmp_path / "googlenet.pth"), options=options()
    )
    assert {"aux1.fc2.weight", "aux2.fc2.weight", "fc.weight"} <= set(source.weights.dropped_keys)
    assert source.weights.unexpected_keys == ()
    backbone = source.backbone.train()  # in training mode too: features, no aux outputs
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1024)


def test_torchvision_squeezenet_is_refused() -> None:
    with pytest.raises(SourceError, match="not supported") as info:
        ADAPTERS["torchvision"].build("squeezenet1_1", weights="none", options=options())
    assert "Linear" in str(info.value) and "resnet" in str(info.value)


def test_torchvision_image_size_below_minimum_is_refused() -> None:
    with pytest.raises(SourceError, match="at least 63x63"):
        ADAPTERS["torchvision"].build("alexnet", weights="none", options=options())


def no_network(*args: object, **kwargs: object) -> None:
    raise AssertionError("tried to download")


@pytest.mark.parametrize(
    ("family", "name", "url"),
    [
        (
            "timm",
            "resnet18",
            "https://huggingface.co/timm/resnet18.a1_in1k/resolve/main/model.safetensors",
        ),
        ("torchvision", "resnet18", "https://download.pytorch.org/models/resnet18-f37072fd.pth"),
    ],
)
def test_default_weights_offline_say_what_to_fetch_and_where(
    family: str, name: str, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADSTART_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(WeightsError) as info:
        ADAPTERS[family].build(name, weights="default", options=options(tmp_path))
    message = str(info.value)
    assert url in message
    assert str(tmp_path) in message


@pytest.mark.parametrize("where", ["hub", "url"])
def test_timm_default_weights_from_the_cache(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    name = "mobilenetv3_small_050"
    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = cfg.hf_hub_id
    saved = full_model("timm", name).state_dict()
    if where == "hub":  # one folder per Hub repo: all their files are model.safetensors
        path = tmp_path / hub_id.replace("/", "--") / "model.safetensors"
        path.parent.mkdir()
        save_file(dict(saved), str(path))
    else:  # a file timm itself downloaded into torch hub's folder
        path = tmp_path / Path(cfg.url).name
        torch.save(saved, path)
    source = ADAPTERS["timm"].build(name, weights="default", options=options(tmp_path))
    assert_loaded(source, saved, HEAD["timm"])
    assert source.weights.path == str(path)
    assert source.weights.spec == "default"
    assert source.weights.description == f"timm {hub_id.split('/', 1)[1]}"
    assert source.weights.source_classes is not None
    assert len(source.weights.source_classes) == 1000


def test_torchvision_default_weights_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    # A stand-in with random weights cannot match the hash in torchvision's file name.
    monkeypatch.setattr("headstart.sources.torchvision_.hash_prefix_in_name", lambda url: None)
    name = "shufflenet_v2_x0_5"
    zoo = torchvision.models.get_model_weights(name).DEFAULT
    saved = full_model("torchvision", name).state_dict()
    torch.save(saved, tmp_path / Path(zoo.url).name)
    source = ADAPTERS["torchvision"].build(name, weights="default", options=options(tmp_path))
    assert_loaded(source, saved, HEAD["torchvision"])
    assert source.weights.description == "torchvision ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1"
    assert source.weights.source_classes is not None
    assert source.weights.source_classes[0] == "tench"
    assert source.weights.path == str(tmp_path / Path(zoo.url).name)

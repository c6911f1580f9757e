"""Weights files: safe loading, unwrapping, key reports, the cache folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from headstart.errors import WeightsError
from headstart.weights import cache_dir, load_into, load_state_dict, parse_weights


class _Net(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2, classes)


def _body() -> nn.Module:
    net = _Net()
    net.fc = nn.Identity()  # type: ignore[assignment]
    return net


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("echo pwned > /dev/null",))


def test_parse_weights_forms(tmp_path: Path) -> None:
    assert parse_weights("default").kind == "default"
    assert parse_weights("none").kind == "none"
    f = tmp_path / "w.pth"
    f.write_bytes(b"x")
    assert parse_weights(str(f)).path == f
    with pytest.raises(WeightsError, match="no such file"):
        parse_weights(str(tmp_path / "missing.pth"))
    with pytest.raises(WeightsError, match="is a folder"):
        parse_weights(str(tmp_path))


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "env"))
    assert cache_dir(tmp_path / "flag") == tmp_path / "flag"
    assert cache_dir() == tmp_path / "env"
    monkeypatch.delenv("HEADSTART_CACHE")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert cache_dir() == tmp_path / "th" / "hub" / "checkpoints"


def test_wrapped_and_prefixed_state_dicts_load(tmp_path: Path) -> None:
    sd = _Net().state_dict()
    for i, obj in enumerate(
        [sd, {"state_dict": sd}, {"model": {f"module.{k}": v for k, v in sd.items()}}]
    ):
        path = tmp_path / f"w{i}.pth"
        torch.save(obj, path)
        loaded = load_state_dict(path)
        assert set(loaded) == set(sd)
        body = _body()
        report = load_into(body, loaded, head_prefixes=["fc"])
        assert report.dropped == ["fc.weight", "fc.bias"]
        assert report.missing == [] and report.unexpected == []
        assert torch.equal(body.state_dict()["conv.weight"], sd["conv.weight"])
        assert report.head_state["fc.weight"].shape == (4, 2)


def test_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"conv.weight": torch.zeros(1), "payload": _Evil()}, path)
    with pytest.raises(WeightsError, match="refused"):
        load_state_dict(path)


def test_truncated_files_are_reported(tmp_path: Path) -> None:
    sd = _Net().state_dict()
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    with pytest.raises(WeightsError, match="truncated"):
        load_state_dict(st)
    pth = tmp_path / "w.pth"
    torch.save(sd, pth)
    pth.write_bytes(pth.read_bytes()[:100])
    with pytest.raises(WeightsError, match=str(pth)):
        load_state_dict(pth)
    empty = tmp_path / "e.pth"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match="empty"):
        load_state_dict(empty)


def test_key_report_names_keys(tmp_path: Path) -> None:
    sd = _Net().state_dict()
    sd["extra.weight"] = torch.zeros(3)
    del sd["bn.bias"]
    report = load_into(_body(), sd, head_prefixes=["fc"])
    assert report.unexpected == ["extra.weight"]
    assert report.missing == ["bn.bias"]
    with pytest.raises(WeightsError, match=r"missing: bn\.bias; unexpected: extra\.weight"):
        load_into(_body(), sd, head_prefixes=["fc"], strict=True)


def test_shape_mismatch_and_foreign_files_are_errors() -> None:
    sd = _Net().state_dict()
    sd["conv.weight"] = torch.zeros(5, 1, 3, 3)
    with pytest.raises(WeightsError, match=r"conv\.weight: file \(5, 1, 3, 3\)"):
        load_into(_body(), sd, head_prefixes=["fc"])
    with pytest.raises(WeightsError, match="none of its 2 tensors fit"):
        load_into(_body(), {"a": torch.zeros(1), "b": torch.zeros(1)}, head_prefixes=["fc"])


def test_a_differently_sized_old_head_is_dropped_not_an_error() -> None:
    sd = _Net(classes=10).state_dict()
    report = load_into(_body(), sd, head_prefixes=["fc"])
    assert report.head_state["fc.weight"].shape == (10, 2)

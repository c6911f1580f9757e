"""Weights files: parsing --weights, safe loading, unwrapping, key reports, cache checks.

Downloads are tested against a real server in ``test_weights_download.py``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from headstart.errors import WeightsError
from headstart.weights.download import check_file, sidecar_path
from headstart.weights.files import format_problem, load_into, load_state_dict
from headstart.weights.resolve import cache_dir, hash_prefix_in_name, parse_weights


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


def test_parse_weights_urls() -> None:
    plain = parse_weights("https://127.0.0.1/models/w.safetensors")
    assert (plain.kind, plain.url, plain.sha256) == (
        "url",
        "https://127.0.0.1/models/w.safetensors",
        None,
    )
    digest = "AB" * 32
    hashed = parse_weights(f"http://127.0.0.1:8000/w.pth#sha256={digest}")
    assert hashed.url == "http://127.0.0.1:8000/w.pth"
    assert hashed.sha256 == digest.lower()
    assert hashed.spec == f"http://127.0.0.1:8000/w.pth#sha256={digest.lower()}"
    with pytest.raises(WeightsError, match="sha256=HEX"):
        parse_weights("http://127.0.0.1/w.pth#md5=abc")
    with pytest.raises(WeightsError, match="sha256=HEX"):
        parse_weights("http://127.0.0.1/w.pth#sha256=xyz")
    with pytest.raises(WeightsError, match="does not end in a file name"):
        parse_weights("http://127.0.0.1/models/")


def test_hash_prefix_in_torch_hub_names() -> None:
    assert hash_prefix_in_name("resnet18-f37072fd.pth") == "f37072fd"
    assert hash_prefix_in_name("shufflenetv2_x0.5-f707e7126e.pth") == "f707e7126e"
    assert hash_prefix_in_name("vit-base-patch16.pth") is None
    assert hash_prefix_in_name("model.safetensors") is None


def test_incomplete_files_are_seen_from_their_structure(tmp_path: Path) -> None:
    sd = {k: v.contiguous() for k, v in _Net().state_dict().items()}
    st = tmp_path / "w.safetensors"
    save_file(sd, str(st))
    pth = tmp_path / "w.pth"
    torch.save(sd, pth)
    assert format_problem(st) is None and format_problem(pth) is None
    for path in (st, pth):
        path.write_bytes(path.read_bytes()[:-10])
        problem = format_problem(path)
        assert problem is not None and problem.cut and "truncated" in problem.text


def test_check_file_records_and_compares_hashes(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    torch.save(_Net().state_dict(), path)
    data = path.read_bytes()
    first = check_file(path)  # put there by hand: nothing to compare with, recorded
    assert first.ok and first.basis == "" and first.sha256 == hashlib.sha256(data).hexdigest()
    assert sidecar_path(path).is_file()
    assert check_file(path).basis == "its recorded sha256"
    path.write_bytes(data[:-1])
    assert f"was {len(data)} when stored" in str(check_file(path).problem)
    path.write_bytes(data)
    assert "not the expected" in str(check_file(path, expected="00000000").problem)


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


def test_key_report_names_keys(caplog: pytest.LogCaptureFixture) -> None:
    sd = _Net().state_dict()
    sd["extra.weight"] = torch.zeros(3)
    with caplog.at_level(logging.WARNING, logger="headstart"):
        report = load_into(_body(), sd, head_prefixes=["fc"])
    assert report.unexpected == ["extra.weight"]  # a warning, by name
    assert "unexpected: extra.weight" in caplog.text
    del sd["bn.bias"]
    with pytest.raises(WeightsError, match=r"missing: bn\.bias; unexpected: extra\.weight"):
        load_into(_body(), sd, head_prefixes=["fc"], strict=True)


def test_a_learned_tensor_missing_from_the_file_is_an_error() -> None:
    # A layer left random in a model called pretrained is the worst outcome: refuse it.
    sd = _Net().state_dict()
    del sd["bn.bias"], sd["bn.running_var"]
    with pytest.raises(WeightsError, match=r"missing from the file: bn\.bias, bn\.running_var"):
        load_into(_body(), sd, head_prefixes=["fc"])


def test_a_missing_computed_buffer_is_only_reported() -> None:
    body = _body()
    body.register_buffer("index", torch.arange(3))  # computed by the model, not learned
    report = load_into(body, _Net().state_dict(), head_prefixes=["fc"])
    assert report.missing == ["index"]
    with pytest.raises(WeightsError, match="strict"):
        load_into(body, _Net().state_dict(), head_prefixes=["fc"], strict=True)


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

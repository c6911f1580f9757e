"""``headstart cache list|verify|path|add|convert|clear``, as a user runs them."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from headstart.errors import WeightsError
from headstart.sources import BuildOptions, build_source
from headstart.weights.download import download, read_stamp
from headstart.weights.files import load_state_dict
from tests.conftest import headstart, run_cli

if TYPE_CHECKING:
    from tests.weights_server import WeightsServer

pytest_plugins = ["tests.weights_server"]  # the weights_server fixture

TIMM_NAME = "mobilenetv3_small_050"  # a small timm model: about 6 MB of weights


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def timm_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = timm.create_model(TIMM_NAME, pretrained=False)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


@pytest.fixture
def cached(weights_server: WeightsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache folder holding one downloaded file, ``w.safetensors``."""
    monkeypatch.setenv("HEADSTART_OFFLINE", "0")
    save_file(timm_state(), str(tmp_path / "w.safetensors"))
    weights_server.files["w.safetensors"] = (tmp_path / "w.safetensors").read_bytes()
    cache = tmp_path / "cache"
    download(weights_server.url("w.safetensors"), cache / "w.safetensors")
    return cache


def test_list_and_verify(cached: Path, weights_server: WeightsServer) -> None:
    digest = sha256(weights_server.files["w.safetensors"])
    listed = run_cli("cache", "list", "--cache-dir", cached, "--json")
    assert listed.code == 0, listed.stderr
    (entry,) = listed.json()["entries"]
    assert entry["name"] == "w.safetensors"
    assert entry["status"] == "checked"
    assert entry["sha256"] == digest
    assert entry["size"] == len(weights_server.files["w.safetensors"])
    assert entry["source"] == weights_server.url("w.safetensors")

    verified = run_cli("cache", "verify", "--cache-dir", cached, "--json")
    assert verified.code == 0, verified.stderr
    (entry,) = verified.json()["entries"]
    assert entry["status"] == "ok" and entry["sha256"] == digest

    human = run_cli("cache", "list", "--cache-dir", cached)
    assert "w.safetensors" in human.stdout and digest[:12] in human.stdout


def test_verify_reports_a_damaged_file_and_fails(cached: Path) -> None:
    path = cached / "w.safetensors"
    path.write_bytes(path.read_bytes()[:5000])
    listed = run_cli("cache", "list", "--cache-dir", cached, "--json")
    assert listed.json()["entries"][0]["status"] == "unchecked"
    result = run_cli("cache", "verify", "--cache-dir", cached, "--json")
    assert result.code == 1
    (entry,) = result.json()["entries"]  # the report is still on stdout
    assert entry["status"] == "damaged"
    assert "truncated" in entry["detail"]
    assert "w.safetensors" in result.stderr and "fetched again" in result.stderr


def test_verify_checks_the_hash_in_a_torch_hub_name(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(2)}, tmp_path / "made.pth")
    good = (tmp_path / "made.pth").read_bytes()
    (tmp_path / "made.pth").unlink()
    (tmp_path / f"net-{sha256(good)[:8]}.pth").write_bytes(good)
    (tmp_path / "bad-0123abcd.pth").write_bytes(good)
    (tmp_path / "plain.bin").write_bytes(good)
    (tmp_path / "w.safetensors.partial").write_bytes(good[:3])
    result = run_cli("cache", "verify", "--cache-dir", tmp_path, "--json")
    assert result.code == 1
    status = {e["name"]: e["status"] for e in result.json()["entries"]}
    assert status == {
        f"net-{sha256(good)[:8]}.pth": "ok",
        "bad-0123abcd.pth": "damaged",
        "plain.bin": "recorded",
        "w.safetensors.partial": "partial",
    }
    assert "bad-0123abcd.pth" in result.stderr


def test_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_cli("cache", "path", "--cache-dir", tmp_path).stdout.strip() == str(tmp_path)
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "env"))
    assert run_cli("cache", "path").stdout.strip() == str(tmp_path / "env")
    tv = run_cli("cache", "path", "--for", "torchvision:resnet18", "--json").json()
    assert tv["path"] == str(tmp_path / "env" / "resnet18-f37072fd.pth")
    assert tv["url"] == "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    tm = run_cli("cache", "path", "--for", "timm:resnet18", "--json").json()
    assert tm["path"] == str(tmp_path / "env" / "timm--resnet18.a1_in1k" / "model.safetensors")
    bad = run_cli("cache", "path", "--for", "builtin:digits-cnn")
    assert bad.code == 1 and "timm:NAME or torchvision:NAME" in bad.stderr


def test_add_puts_a_file_where_default_weights_are_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADSTART_OFFLINE", "1")
    cache = tmp_path / "cache"
    saved = timm_state()
    save_file(saved, str(tmp_path / "downloaded.safetensors"))
    result = run_cli(
        "cache",
        "add",
        tmp_path / "downloaded.safetensors",
        "--for",
        f"timm:{TIMM_NAME}",
        "--cache-dir",
        cache,
        "--json",
    )
    assert result.code == 0, result.stderr
    dest = Path(result.json()["path"])
    assert dest.parent.parent == cache and dest.name == "model.safetensors"
    stamp = read_stamp(dest)
    assert stamp is not None and stamp.source.startswith("added by hand")

    # offline, the default weights now come from that file
    source = build_source(
        f"timm:{TIMM_NAME}",
        weights="default",
        options=BuildOptions(image_size=32, cache_dir=str(cache)),
    )
    assert source.weights.path == str(dest)
    assert torch.equal(
        source.backbone.body.state_dict()["conv_stem.weight"], saved["conv_stem.weight"]
    )


def test_add_refuses_a_file_that_is_not_the_published_one(tmp_path: Path) -> None:
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "resnet18.pth")
    result = run_cli(
        "cache",
        "add",
        tmp_path / "resnet18.pth",
        "--for",
        "torchvision:resnet18",
        "--cache-dir",
        tmp_path / "cache",
    )
    assert result.code == 1
    assert "is not the f37072fd" in result.stderr
    assert not (tmp_path / "cache" / "resnet18-f37072fd.pth").exists()


def test_add_for_a_url_checks_its_hash_and_the_run_finds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADSTART_OFFLINE", "1")
    save_file(timm_state(), str(tmp_path / "w.safetensors"))
    digest = sha256((tmp_path / "w.safetensors").read_bytes())
    url = f"http://127.0.0.1:9/models/w.safetensors#sha256={digest}"
    cache = tmp_path / "cache"
    wrong = run_cli("cache", "add", tmp_path / "w.safetensors", "--for", url[:-8] + "0" * 8)
    assert wrong.code == 1 and "is not the" in wrong.stderr
    added = run_cli("cache", "add", tmp_path / "w.safetensors", "--for", url, "--cache-dir", cache)
    assert added.code == 0, added.stderr
    source = build_source(
        f"timm:{TIMM_NAME}", weights=url, options=BuildOptions(image_size=32, cache_dir=str(cache))
    )
    assert source.weights.path == str(cache / "w.safetensors")
    assert source.weights.sha256 == digest


def test_add_refuses_a_pickle_that_would_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class MakesAMarker:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (open, (str(marker), "w"))

    torch.save({"w": torch.zeros(1), "x": MakesAMarker()}, tmp_path / "evil.pth")
    result = run_cli(
        "cache",
        "add",
        tmp_path / "evil.pth",
        "--for",
        "http://127.0.0.1:9/evil.pth",
        "--cache-dir",
        tmp_path / "cache",
    )
    assert result.code == 1 and "refused to load" in result.stderr
    assert not marker.exists()
    assert not (tmp_path / "cache" / "evil.pth").exists()


def test_convert_rewrites_a_trusted_checkpoint_as_safetensors(tmp_path: Path) -> None:
    state = timm_state()
    # Many training scripts save their arguments too: a safe load refuses those.
    checkpoint = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    checkpoint["args"] = argparse.Namespace(lr=0.1)  # type: ignore[assignment]
    torch.save(checkpoint, tmp_path / "trusted.pth")
    with pytest.raises(WeightsError, match="headstart cache convert"):
        load_state_dict(tmp_path / "trusted.pth")

    refused = run_cli("cache", "convert", tmp_path / "trusted.pth")
    assert refused.code == 1 and "argparse.Namespace" in refused.stderr
    result = run_cli("cache", "convert", tmp_path / "trusted.pth", "--trust", "--json")
    assert result.code == 0, result.stderr
    assert result.json()["unpickled"] is True
    out = Path(result.json()["path"])
    assert out == tmp_path / "trusted.safetensors"
    loaded = load_file(str(out))
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)

    again = run_cli("cache", "convert", tmp_path / "trusted.pth", "--trust")
    assert again.code == 1 and "already exists" in again.stderr
    other = run_cli(
        "cache", "convert", tmp_path / "trusted.pth", "--trust", "--out", tmp_path / "o.safetensors"
    )
    assert other.code == 0 and (tmp_path / "o.safetensors").is_file()


def test_convert_help_says_it_runs_pickled_code() -> None:
    result = headstart("cache", "convert", "--help")
    assert result.code == 0
    text = " ".join(result.stdout.split())
    assert "weights_only=False" in text and "RUNS the code" in text


def test_clear(cached: Path) -> None:
    (cached / "other-notes.txt").write_text("not ours")
    (cached / "x.pth.partial").write_bytes(b"12")
    refused = run_cli("cache", "clear", "--cache-dir", cached)
    assert refused.code == 1 and "--yes" in refused.stderr
    assert (cached / "w.safetensors").is_file()
    result = run_cli("cache", "clear", "--cache-dir", cached, "--yes", "--json")
    assert result.code == 0, result.stderr
    deleted = {Path(p).name for p in result.json()["deleted"]}
    assert {"w.safetensors", "w.safetensors.sha256.json", "x.pth.partial"} <= deleted
    assert sorted(p.name for p in cached.iterdir()) == ["other-notes.txt"]
    assert (
        json.loads(run_cli("cache", "list", "--cache-dir", cached, "--json").stdout)["entries"]
        == []
    )

"""Downloads you can trust: a real HTTP server on 127.0.0.1, broken on purpose.

Each test starts its own server (``weights_server``), serving weights files from memory;
it counts requests, honours Range, and can cut or slow down transfers.  Caches are
``tmp_path`` folders: nothing touches ~/.cache or torch hub's folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from safetensors.torch import save, save_file
from torch import nn

from headstart.errors import WeightsError
from headstart.sources import BuildOptions, build_source
from headstart.sources.builtin import BUILTIN_MODELS
from headstart.weights.download import download, partial_path, read_stamp
from headstart.weights.files import load_state_dict
from headstart.weights.resolve import parse_weights, weights_file
from tests.conftest import run_cli

if TYPE_CHECKING:
    from tests.weights_server import WeightsServer

pytest_plugins = ["tests.weights_server"]  # the weights_server fixture


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def small_cnn_state() -> dict[str, torch.Tensor]:
    """builtin:small-cnn with its old head ``fc``: about 1.6 MB as safetensors."""
    torch.manual_seed(0)
    return {k: v.contiguous() for k, v in BUILTIN_MODELS["small-cnn"].make().state_dict().items()}


@pytest.fixture(scope="module")
def small_cnn_bytes() -> bytes:
    return save(small_cnn_state())


@pytest.fixture(autouse=True)
def _online(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite runs offline (conftest); these tests talk to their own server."""
    monkeypatch.setenv("HEADSTART_OFFLINE", "0")


def fetch(
    server: WeightsServer, name: str, cache: Path, *, attempts: int = 4, backoff_s: float = 0.0
) -> Path:
    """Download a file the server holds, with its sha256, into ``cache``."""
    return download(
        server.url(name),
        cache / name,
        sha256=sha256(server.files[name]),
        attempts=attempts,
        backoff_s=backoff_s,
    )


# --------------------------------------------------------------------------- downloads


def test_a_download_is_used_and_the_second_run_does_not_download_again(
    weights_server: WeightsServer, small_cnn_bytes: bytes, tmp_path: Path
) -> None:
    weights_server.files["w.safetensors"] = small_cnn_bytes
    cache = tmp_path / "cache"
    request = parse_weights(
        f"{weights_server.url('w.safetensors')}#sha256={sha256(small_cnn_bytes)}"
    )
    path = weights_file(request, cache=cache)
    assert path == cache / "w.safetensors"
    assert path.read_bytes() == small_cnn_bytes
    assert set(load_state_dict(path)) == set(small_cnn_state())
    stamp = read_stamp(path)
    assert stamp is not None and stamp.sha256 == sha256(small_cnn_bytes)
    assert stamp.source == weights_server.url("w.safetensors")
    assert not partial_path(path).exists()

    assert weights_file(request, cache=cache) == path
    assert len(weights_server.gets("w.safetensors")) == 1, "the second run downloaded again"


def test_a_file_put_in_the_cache_by_hand_is_used_as_it_is(
    weights_server: WeightsServer, small_cnn_bytes: bytes, tmp_path: Path
) -> None:
    (tmp_path / "by-hand.safetensors").write_bytes(small_cnn_bytes)
    weights_server.files["by-hand.safetensors"] = b"not these bytes"
    request = parse_weights(weights_server.url("by-hand.safetensors"))  # no hash to check
    assert weights_file(request, cache=tmp_path) == tmp_path / "by-hand.safetensors"
    assert weights_server.requests == []
    stamp = read_stamp(tmp_path / "by-hand.safetensors")
    assert stamp is not None and stamp.sha256 == sha256(small_cnn_bytes)  # recorded


def test_a_connection_closed_half_way_is_resumed_by_the_next_run(
    weights_server: WeightsServer, small_cnn_bytes: bytes, tmp_path: Path
) -> None:
    weights_server.files["w.safetensors"] = small_cnn_bytes
    half = len(small_cnn_bytes) // 2
    weights_server.cut_after, weights_server.cut_requests = half, 1
    dest = tmp_path / "w.safetensors"
    with pytest.raises(WeightsError, match="next run resumes it") as info:
        fetch(weights_server, "w.safetensors", tmp_path, attempts=1, backoff_s=0)
    assert str(partial_path(dest)) in str(info.value)
    assert not dest.exists(), "a partial file under the final name"
    assert partial_path(dest).stat().st_size == half

    assert fetch(weights_server, "w.safetensors", tmp_path) == dest
    second = weights_server.gets("w.safetensors")[-1]
    assert second.range == f"bytes={half}-"
    assert dest.read_bytes() == small_cnn_bytes
    assert not partial_path(dest).exists()


def test_interrupted_transfers_are_retried_within_one_run(
    weights_server: WeightsServer, small_cnn_bytes: bytes, tmp_path: Path
) -> None:
    weights_server.files["w.safetensors"] = small_cnn_bytes
    weights_server.cut_after, weights_server.cut_requests = 100_000, 2
    path = fetch(weights_server, "w.safetensors", tmp_path, attempts=3, backoff_s=0)
    assert path.read_bytes() == small_cnn_bytes
    ranges = [r.range for r in weights_server.gets("w.safetensors")]
    assert ranges == [None, "bytes=100000-", "bytes=200000-"]


def test_a_file_changed_on_the_server_is_fetched_whole_not_stitched(
    weights_server: WeightsServer, small_cnn_bytes: bytes, tmp_path: Path
) -> None:
    weights_server.files["w.safetensors"] = small_cnn_bytes
    weights_server.cut_after, weights_server.cut_requests = 100_000, 1
    url = weights_server.url("w.safetensors")  # no hash: only If-Range protects the part
    with pytest.raises(WeightsError):
        download(url, tmp_path / "w.safetensors", attempts=1)
    torch.manual_seed(1)
    new = save({k: torch.randn_like(v.float()) for k, v in small_cnn_state().items()})
    weights_server.files["w.safetensors"] = new
    path = download(url, tmp_path / "w.safetensors")
    assert weights_server.gets("w.safetensors")[-1].if_range is not None
    assert path.read_bytes() == new


def test_a_wrong_hash_is_an_error_and_nothing_is_cached(
    weights_server: WeightsServer, small_cnn_bytes: bytes, tmp_path: Path
) -> None:
    weights_server.files["w.safetensors"] = small_cnn_bytes
    wrong = sha256(b"something else")
    request = parse_weights(f"{weights_server.url('w.safetensors')}#sha256={wrong}")
    with pytest.raises(WeightsError, match=f"not {wrong}; nothing was cached"):
        weights_file(request, cache=tmp_path)
    assert not (tmp_path / "w.safetensors").exists()
    assert not partial_path(tmp_path / "w.safetensors").exists()


def test_a_truncated_cached_file_is_detected_and_fetched_again(
    weights_server: WeightsServer,
    small_cnn_bytes: bytes,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    weights_server.files["w.safetensors"] = small_cnn_bytes
    url = weights_server.url("w.safetensors")
    path = download(url, tmp_path / "w.safetensors")  # no hash given: the sidecar's counts
    path.write_bytes(small_cnn_bytes[: len(small_cnn_bytes) // 3])
    with caplog.at_level(logging.WARNING, logger="headstart"):
        assert download(url, tmp_path / "w.safetensors") == path
    assert "truncated" in caplog.text and str(path) in caplog.text
    assert len(weights_server.gets("w.safetensors")) == 2
    assert path.read_bytes() == small_cnn_bytes


def test_a_cached_file_altered_in_place_is_fetched_again(
    weights_server: WeightsServer, small_cnn_bytes: bytes, tmp_path: Path
) -> None:
    weights_server.files["w.safetensors"] = small_cnn_bytes
    path = download(weights_server.url("w.safetensors"), tmp_path / "w.safetensors")
    data = bytearray(small_cnn_bytes)
    data[-1] ^= 0xFF  # same size, one bit of a weight flipped
    path.write_bytes(bytes(data))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1))
    download(weights_server.url("w.safetensors"), tmp_path / "w.safetensors")
    assert path.read_bytes() == small_cnn_bytes
    assert len(weights_server.gets("w.safetensors")) == 2


def test_a_truncated_file_put_there_by_hand_is_caught_by_its_hash(
    weights_server: WeightsServer, small_cnn_bytes: bytes, tmp_path: Path
) -> None:
    weights_server.files["w.safetensors"] = small_cnn_bytes
    (tmp_path / "w.safetensors").write_bytes(small_cnn_bytes[:1000])  # no sidecar
    assert fetch(weights_server, "w.safetensors", tmp_path).read_bytes() == small_cnn_bytes


# --------------------------------------------------------------------------- offline


def test_offline_a_missing_file_says_which_url_and_where(
    weights_server: WeightsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = weights_server.url("w.safetensors")
    monkeypatch.setenv("HEADSTART_OFFLINE", "1")
    with pytest.raises(WeightsError, match="offline") as info:
        weights_file(parse_weights(url), cache=tmp_path)
    message = str(info.value)
    assert url in message and str(tmp_path / "w.safetensors") in message
    assert f"headstart cache add FILE --for {url}" in message
    assert weights_server.requests == []


def test_no_network_says_the_same(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/w.safetensors"
    with pytest.raises(WeightsError, match="no network") as info:
        download(url, tmp_path / "w.safetensors", for_spec="timm:resnet18")
    assert url in str(info.value) and str(tmp_path / "w.safetensors") in str(info.value)
    assert "headstart cache add FILE --for timm:resnet18" in str(info.value)


def test_a_missing_url_is_an_error_that_names_it(
    weights_server: WeightsServer, tmp_path: Path
) -> None:
    url = weights_server.url("nope.safetensors")
    with pytest.raises(WeightsError, match=f"could not download {url}: HTTP 404"):
        download(url, tmp_path / "nope.safetensors")
    assert len(weights_server.requests) == 1, "a 404 is not retried"


# --------------------------------------------------------------------------- a killed run


def test_a_fit_killed_mid_download_leaves_no_file_and_the_next_run_completes_it(
    weights_server: WeightsServer,
    small_cnn_bytes: bytes,
    digits_folder: Path,
    tmp_path: Path,
) -> None:
    weights_server.files["w.safetensors"] = small_cnn_bytes
    weights_server.slow_requests = 1  # 4 KB every 20 ms: about 8 s for the whole file
    url = f"{weights_server.url('w.safetensors')}#sha256={sha256(small_cnn_bytes)}"
    cache = tmp_path / "cache"
    dest, part = cache / "w.safetensors", partial_path(cache / "w.safetensors")
    args = ["fit", digits_folder, "--source", "builtin:small-cnn", "--weights", url]
    # a strategy that loads the weights (auto may race to scratch, which loads none)
    args += ["--strategy", "full", "--cache-dir", cache, "--epochs", "1", "--image-size", "32"]
    env = {**os.environ, "HEADSTART_OFFLINE": "0"}
    child = subprocess.Popen(
        [sys.executable, "-m", "headstart", *map(str, [*args, "--out", tmp_path / "killed"])],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not (part.is_file() and part.stat().st_size > 0):
            assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
            assert time.monotonic() < deadline, "the download never started"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
        if child.stderr:
            child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    assert not dest.exists(), "a killed download left a file under the final name"
    kept = part.stat().st_size
    assert 0 < kept < len(small_cnn_bytes)

    result = run_cli(*args, "--out", tmp_path / "next", "--json")
    assert result.code == 0, result.stderr
    assert weights_server.gets("w.safetensors")[-1].range == f"bytes={kept}-"
    assert dest.read_bytes() == small_cnn_bytes
    assert not part.exists()
    meta = json.loads((tmp_path / "next" / "headstart.json").read_text())
    assert meta["source"]["weights"]["sha256"] == sha256(small_cnn_bytes)


# --------------------------------------------------------------------------- safe loading


class _MakesAMarker:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))  # unpickling would create the marker file


def test_a_pickle_that_would_run_code_is_refused(
    weights_server: WeightsServer, digits_folder: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({**small_cnn_state(), "payload": _MakesAMarker(marker)}, evil)
    with pytest.raises(WeightsError, match="refused to load") as info:
        load_state_dict(evil)
    assert "headstart cache convert" in str(info.value)
    assert not marker.exists()

    weights_server.files["evil.pth"] = evil.read_bytes()  # the same file over HTTP
    result = run_cli(
        "fit",
        digits_folder,
        "--source",
        "builtin:small-cnn",
        "--weights",
        weights_server.url("evil.pth"),
        "--cache-dir",
        tmp_path / "cache",
        "--out",
        tmp_path / "run",
    )
    assert result.code == 1
    assert "refused to load" in result.stderr
    assert not marker.exists()
    assert not (tmp_path / "run" / "headstart.json").exists()


# --------------------------------------------------------------------------- key reports


def test_a_checkpoint_saved_from_data_parallel_loads(tmp_path: Path) -> None:
    state = small_cnn_state()
    model = BUILTIN_MODELS["small-cnn"].make()
    model.load_state_dict(state)
    torch.save({"model": nn.DataParallel(model).state_dict(), "epoch": 9}, tmp_path / "dp.pth")
    assert all(k.startswith("module.") for k in torch.load(tmp_path / "dp.pth")["model"])
    source = build_source(
        "builtin:small-cnn", weights=str(tmp_path / "dp.pth"), options=BuildOptions()
    )
    body = source.backbone.body.state_dict()
    assert all(torch.equal(body[k], state[k]) for k in body)
    assert source.weights.missing_keys == () and source.weights.unexpected_keys == ()
    assert set(source.weights.dropped_keys) == {"fc.weight", "fc.bias"}


def test_a_backbone_key_missing_from_the_file_is_an_error_that_names_it(tmp_path: Path) -> None:
    state = small_cnn_state()
    del state["block2.0.weight"]
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(WeightsError, match=r"missing from the file: block2\.0\.weight"):
        build_source("builtin:small-cnn", weights=str(tmp_path / "w.safetensors"))


def test_unexpected_keys_warn_and_strict_refuses_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = {**small_cnn_state(), "aux.weight": torch.zeros(3)}
    save_file(state, str(tmp_path / "w.safetensors"))
    path = str(tmp_path / "w.safetensors")
    with caplog.at_level(logging.WARNING, logger="headstart"):
        source = build_source("builtin:small-cnn", weights=path)
    assert source.weights.unexpected_keys == ("aux.weight",)
    assert "unexpected: aux.weight" in caplog.text
    with pytest.raises(WeightsError, match=r"strict.*unexpected: aux\.weight"):
        build_source("builtin:small-cnn", weights=path, options=BuildOptions(strict=True))


# --------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def resnet18_bytes() -> bytes:
    import timm

    torch.manual_seed(0)
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    return save({k: v.contiguous() for k, v in state.items()})


def test_fit_with_weights_from_a_url(
    weights_server: WeightsServer, resnet18_bytes: bytes, digits_folder: Path, tmp_path: Path
) -> None:
    weights_server.files["w.safetensors"] = resnet18_bytes
    digest = sha256(resnet18_bytes)
    url = f"{weights_server.url('w.safetensors')}#sha256={digest}"
    run = tmp_path / "run"
    args = ["fit", digits_folder, "--source", "timm:resnet18", "--weights", url]
    args += ["--strategy", "linear"]  # auto may race to scratch, which loads no weights
    args += ["--epochs", "1", "--image-size", "32", "--cache-dir", tmp_path / "cache"]
    result = run_cli(*args, "--out", run, "--json")
    assert result.code == 0, result.stderr
    weights = json.loads((run / "headstart.json").read_text())["source"]["weights"]
    assert weights["spec"] == url
    assert weights["sha256"] == digest
    assert weights["pretrained"] is True
    assert weights["path"] == str(tmp_path / "cache" / "w.safetensors")
    assert set(weights["dropped_keys"]) == {"fc.weight", "fc.bias"}

    again = run_cli(*args, "--out", tmp_path / "again")
    assert again.code == 0, again.stderr
    assert len(weights_server.gets("w.safetensors")) == 1

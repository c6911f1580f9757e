"""Downloads without ``#sha256`` (#17 item 4): checked for their format before they get
their final name, and a cached file that is not good is set aside and fetched again.

Against a real HTTP server on 127.0.0.1 (``tests/weights_server.py``) that can also answer
without a Content-Length, the connection's close ending the body (HTTP/1.0), as a
server whose transfer is cut silently does.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from headstart.errors import WeightsError
from headstart.sources.builtin import BUILTIN_MODELS
from headstart.weights.download import download, partial_path, sidecar_path, write_stamp
from tests.conftest import run_cli
from tests.weights_server import WeightsServer, _handler

WEB_PAGE = (
    b"<!DOCTYPE html>\n<html lang=en><head><title>Sign in to continue</title></head>"
    b"<body><form action=/login method=post>...</form></body></html>\n"
)


@dataclass
class Server(WeightsServer):
    """A :class:`WeightsServer` that can leave Content-Length out for some files."""

    no_length: set[str] = field(default_factory=set)


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server()

    class Handler(_handler(state)):  # type: ignore[misc]
        def send_header(self, keyword: str, value: str) -> None:
            if keyword == "Content-Length" and self.path.lstrip("/") in state.no_length:
                return  # HTTP/1.0: the body ends where the connection closes
            super().send_header(keyword, value)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _online(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite runs offline (conftest); these tests talk to their own server."""
    monkeypatch.setenv("HEADSTART_OFFLINE", "0")


def small_cnn_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.contiguous() for k, v in BUILTIN_MODELS["small-cnn"].make().state_dict().items()}


@pytest.fixture(scope="module")
def good() -> bytes:
    """builtin:small-cnn's weights as safetensors (about 1.6 MB)."""
    return save(small_cnn_state())


def torch_bytes(tmp_path: Path, *, legacy: bool = False) -> bytes:
    path = tmp_path / "made.pth"
    torch.save(small_cnn_state(), path, _use_new_zipfile_serialization=not legacy)
    data = path.read_bytes()
    path.unlink()
    return data


def random_bytes(n: int) -> bytes:
    return random.Random(17).randbytes(n)


def fit(digits: Path, url: str, cache: Path, out: Path) -> tuple[int, str]:
    """``headstart fit`` with weights from ``url``; its exit code and its error line."""
    result = run_cli(
        "fit",
        digits,
        "--source",
        "builtin:small-cnn",
        "--weights",
        url,
        "--cache-dir",
        cache,
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--out",
        out,
    )
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("headstart: error: ")]
    return result.code, (errors[-1] if errors else result.stderr)


def set_aside(cache: Path, name: str) -> list[Path]:
    return sorted(cache.glob(f"{name}.bad-*"))


# --------------------------------------------------------------------------- a bad download


@pytest.mark.parametrize(
    ("served", "message"),
    [
        ("web page", "the server sent a web page, not weights (it begins: '<!DOCTYPE html>"),
        ("cut, no Content-Length", "cut short"),
        ("random bytes", "is not a safetensors file"),
    ],
)
def test_a_bad_download_fails_is_not_cached_and_the_next_run_fetches_it(
    served: str,
    message: str,
    server: Server,
    good: bytes,
    digits_folder: Path,
    tmp_path: Path,
) -> None:
    name = "w.safetensors"
    if served == "web page":
        server.files[name] = WEB_PAGE  # status 200
    elif served == "random bytes":
        server.files[name] = random_bytes(len(good))
    else:
        server.files[name] = good[: len(good) // 2]
        server.no_length.add(name)
    cache = tmp_path / "cache"
    dest = cache / name

    code, error = fit(digits_folder, server.url(name), cache, tmp_path / "first")
    assert code == 1, error
    assert message in error and server.url(name) in error
    assert "nothing was cached" in error
    assert not dest.exists(), "a bad download was cached under its final name"
    assert not sidecar_path(dest).exists() and not partial_path(dest).exists()
    assert not (tmp_path / "first" / "headstart.json").exists()

    server.files[name] = good  # the server is fixed
    server.no_length.clear()
    before = len(server.gets(name))
    code, error = fit(digits_folder, server.url(name), cache, tmp_path / "second")
    assert code == 0, error
    assert len(server.gets(name)) == before + 1, "the second run did not download again"
    assert dest.read_bytes() == good


def test_a_transfer_cut_without_content_length_is_kept_as_a_part_and_resumed(
    server: Server, good: bytes, tmp_path: Path
) -> None:
    name = "w.safetensors"
    server.files[name] = good  # whole on the server, but every transfer is cut short
    server.no_length.add(name)
    third = len(good) // 3
    server.cut_after, server.cut_requests = third, 2
    dest = tmp_path / name
    with pytest.raises(WeightsError, match="next run resumes it") as info:
        download(server.url(name), dest, attempts=2, backoff_s=0)
    assert "the transfer ended early" in str(info.value)
    assert not dest.exists()
    assert partial_path(dest).stat().st_size == 2 * third
    assert [r.range for r in server.gets(name)] == [None, f"bytes={third}-"]

    assert download(server.url(name), dest) == dest
    assert server.gets(name)[-1].range == f"bytes={2 * third}-"
    assert dest.read_bytes() == good


@pytest.mark.parametrize(
    ("served", "message"),
    [
        ("web page", "the server sent a web page, not weights"),
        ("random bytes", "is not a weights file"),
        ("a zip that is not torch's", "not a torch checkpoint"),
        ("an old-format pickle, cut", "is truncated"),
    ],
)
def test_a_pth_download_must_be_a_torch_zip_or_pickle(
    served: str, message: str, server: Server, tmp_path: Path
) -> None:
    import zipfile

    if served == "web page":
        body = WEB_PAGE
    elif served == "random bytes":
        body = random_bytes(50_000)
    elif served == "an old-format pickle, cut":
        body = torch_bytes(tmp_path, legacy=True)[:300]  # inside its pickled structure
    else:
        with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
            z.writestr("notes.txt", "not weights")
        body = (tmp_path / "other.zip").read_bytes()
    server.files["w.pth"] = body
    dest = tmp_path / "cache" / "w.pth"
    with pytest.raises(WeightsError, match="nothing was cached") as info:
        download(server.url("w.pth"), dest, attempts=1)
    assert message in str(info.value)
    assert not dest.exists() and not partial_path(dest).exists()

    for legacy in (False, True):  # fixed: torch's zip or its old format, without a hash
        server.files["w.pth"] = torch_bytes(tmp_path, legacy=legacy)
        server.no_length.add("w.pth")
        dest.unlink(missing_ok=True)
        sidecar_path(dest).unlink(missing_ok=True)
        assert download(server.url("w.pth"), dest).read_bytes() == server.files["w.pth"]


# --------------------------------------------------------------------------- in the cache


def test_a_bad_file_already_cached_is_set_aside_and_fetched_again(
    server: Server, good: bytes, digits_folder: Path, tmp_path: Path
) -> None:
    """What an earlier version left: a web page under the final name, stamped as good."""
    name = "w.safetensors"
    cache = tmp_path / "cache"
    cache.mkdir()
    url = server.url(name)
    (cache / name).write_bytes(WEB_PAGE)
    write_stamp(cache / name, hashlib.sha256(WEB_PAGE).hexdigest(), url)
    server.files[name] = good

    code, error = fit(digits_folder, url, cache, tmp_path / "run")
    assert code == 0, error
    assert (cache / name).read_bytes() == good
    assert len(server.gets(name)) == 1
    (aside,) = set_aside(cache, name)
    assert aside.read_bytes() == WEB_PAGE  # kept to look at, not under the final name


def test_a_cached_file_that_fails_to_load_is_set_aside_and_the_next_run_fetches_it(
    server: Server, digits_folder: Path, tmp_path: Path
) -> None:
    """Damage past what the structure shows: an old-format pickle whose tensor data is cut
    (its pickles whole), stamped as downloaded."""
    name = "w.pth"
    cache = tmp_path / "cache"
    cache.mkdir()
    url = server.url(name)
    whole = torch_bytes(tmp_path, legacy=True)
    (cache / name).write_bytes(whole[:-1000])
    write_stamp(cache / name, hashlib.sha256(whole[:-1000]).hexdigest(), url)
    server.files[name] = whole

    code, error = fit(digits_folder, url, cache, tmp_path / "first")
    assert code == 1
    assert f"{cache / name}: not a readable weights file" in error
    assert f"set aside as {name}.bad-" in error and "the next run downloads it again" in error
    assert not (cache / name).exists() and not sidecar_path(cache / name).exists()
    assert len(set_aside(cache, name)) == 1
    assert server.gets(name) == []

    code, error = fit(digits_folder, url, cache, tmp_path / "second")
    assert code == 0, error
    assert (cache / name).read_bytes() == whole
    assert len(server.gets(name)) == 1


def test_cache_verify_keeps_its_promise_and_clear_removes_what_was_set_aside(
    server: Server, good: bytes, tmp_path: Path
) -> None:
    """A file altered in place, size and mtime kept: only ``verify`` hashes it again."""
    name = "w.safetensors"
    server.files[name] = good
    cache = tmp_path / "cache"
    dest = download(server.url(name), cache / name)
    st = dest.stat()
    data = bytearray(good)
    data[-1] ^= 0xFF
    dest.write_bytes(bytes(data))
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))

    verified = run_cli("cache", "verify", "--cache-dir", cache, "--json")
    assert verified.code == 1
    assert "fetched again" in verified.stderr
    entries = {e["name"]: e for e in verified.json()["entries"]}
    assert entries[name]["status"] == "damaged"

    assert download(server.url(name), cache / name) == dest  # the next run
    assert dest.read_bytes() == good
    assert len(server.gets(name)) == 2

    listed = run_cli("cache", "list", "--cache-dir", cache, "--json").json()["entries"]
    assert {e["status"] for e in listed} == {"checked", "set aside"}
    assert run_cli("cache", "verify", "--cache-dir", cache).code == 0  # set aside: not used
    cleared = run_cli("cache", "clear", "--cache-dir", cache, "--yes", "--json")
    assert cleared.code == 0, cleared.stderr
    assert set_aside(cache, name) == []
    assert (
        json.loads(run_cli("cache", "list", "--cache-dir", cache, "--json").stdout)["entries"] == []
    )

"""A small HTTP server on 127.0.0.1 for download tests: serves files from memory, honours
Range and If-Range, counts requests, and can break or slow down the next transfers."""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest


@dataclass
class Request:
    path: str
    range: str | None
    if_range: str | None


@dataclass
class WeightsServer:
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    # The next `cut_requests` responses stop after `cut_after` bytes of body and close.
    cut_after: int = 0
    cut_requests: int = 0
    # The next `slow_requests` responses send `slow_chunk` bytes every `slow_delay_s`.
    slow_requests: int = 0
    slow_chunk: int = 4096
    slow_delay_s: float = 0.02
    port: int = 0

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def gets(self, name: str) -> list[Request]:
        return [r for r in self.requests if r.path == f"/{name}"]

    @staticmethod
    def etag(body: bytes) -> str:
        return '"' + hashlib.sha256(body).hexdigest()[:16] + '"'


def _handler(server: WeightsServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            server.requests.append(
                Request(self.path, self.headers.get("Range"), self.headers.get("If-Range"))
            )
            body = server.files.get(self.path.lstrip("/"))
            if body is None:
                self.send_error(404)
                return
            etag = server.etag(body)
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if match and self.headers.get("If-Range") in (None, etag):
                start = int(match.group(1))
                if start >= len(body):
                    self.send_error(416)
                    return
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(body) - start))
            self.send_header("ETag", etag)
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            payload = body[start:]
            try:
                if server.cut_requests > 0:
                    server.cut_requests -= 1
                    self.wfile.write(payload[: server.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                elif server.slow_requests > 0:
                    server.slow_requests -= 1
                    for i in range(0, len(payload), server.slow_chunk):
                        self.wfile.write(payload[i : i + server.slow_chunk])
                        self.wfile.flush()
                        time.sleep(server.slow_delay_s)
                else:
                    self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client went away (killed): nothing to do

    return Handler


@pytest.fixture
def weights_server() -> Iterator[WeightsServer]:
    """A :class:`WeightsServer` on 127.0.0.1, on a free port, for one test."""
    state = WeightsServer()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
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

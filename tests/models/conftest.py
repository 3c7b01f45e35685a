"""Fixtures for the MuseTalk model tests: a temporary official-layout models folder with tiny random weights,
and a local HTTP server that answers like the Hugging Face Hub (LFS files redirect to a CDN path)."""
from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from testing.tiny_models import TinyLayout, write_tiny_layout


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """The test machine's 2 cores are shared between test runs; more threads only add contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_layout(tmp_path_factory: pytest.TempPathFactory) -> TinyLayout:
    return write_tiny_layout(tmp_path_factory.mktemp("models"), whisper=False)


# ------------------------------------------------------------------------------------------- fake Hub


@dataclass
class Hosted:
    data: bytes
    lfs: bool  # big files: HEAD/GET answer 302 to /cdn/<sha256> with X-Linked-Size
    claimed_size: int | None = None  # lie about the size, to test the size check
    cut_once_after: int | None = None  # drop the connection after this many body bytes, once

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class FakeHub:
    files: dict[str, Hosted] = field(default_factory=dict)  # URL path -> file
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range)
    url: str = ""

    def add(self, path: str, data: bytes, lfs: bool) -> None:
        self.files[path] = Hosted(data, lfs)

    def cdn(self, sha: str) -> Hosted | None:
        return next((f for f in self.files.values() if f.lfs and f.sha256 == sha), None)


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            hub.requests.append((self.command, self.path, self.headers.get("Range")))
            if self.path.startswith("/cdn/"):
                hosted = hub.cdn(self.path.removeprefix("/cdn/"))
                if hosted is None:
                    return self._status(404)
                return self._serve_bytes(hosted, body)
            hosted = hub.files.get(self.path)
            if hosted is None:
                return self._status(404)
            if hosted.lfs:
                self.send_response(302)
                self.send_header("Location", f"/cdn/{hosted.sha256}")
                self.send_header("X-Linked-Size", str(hosted.claimed_size or len(hosted.data)))
                self.send_header("X-Linked-Etag", f'"{hosted.sha256}"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            return self._serve_bytes(hosted, body, hosted.claimed_size)

        def _serve_bytes(self, hosted: Hosted, body: bool, claimed: int | None = None) -> None:
            data = hosted.data
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if match:
                start = int(match[1])
                if start >= len(data):
                    return self._status(416)
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            payload = data[start:]
            length = claimed if (claimed is not None and not body) else len(payload)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            if body and hosted.cut_once_after is not None:
                self.wfile.write(payload[:hosted.cut_once_after])
                hosted.cut_once_after = None
                self.close_connection = True
            elif body:
                self.wfile.write(payload)
            return None

        def _status(self, code: int) -> None:
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    hub = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join()

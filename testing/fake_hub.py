"""A local server that answers file downloads the way the Hugging Face Hub does today, for huggingface_hub.

Two origins, as on the real Hub: the Hub itself and a storage host ("CDN") for large (LFS) files.
- HEAD/GET `/{owner}/{name}/resolve/{revision}/{path}` on the Hub: `revision` is a branch name or a full commit
  hash; every answer carries `X-Repo-Commit` (the commit the revision resolves to). A small file answers 200 with its
  `ETag` (the git blob id) and body; a large one a 302 to a signed URL on the storage host, with `X-Linked-Size` and
  `X-Linked-Etag` (its sha256) on the redirect itself.
- Errors as the Hub sends them: an unknown repository, or a private one without a valid token, 401 with
  `X-Error-Code: RepoNotFound`; an unknown revision 404 `RevisionNotFound`; an unknown file 404 `EntryNotFound`.
- The storage host serves bytes (`Range` answered with 206) and, like a signed-URL bucket, refuses (400) a request
  that also carries an `Authorization` header. It also serves plain files by path (`bucket`), as a public bucket.
Every request is recorded (`requests`) with its origin, method, path and the headers the tests look at.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<path>.+)$")


@dataclass
class HubFile:
    data: bytes
    lfs: bool  # large files: stored on the storage host, the Hub answers with a redirect
    cut_once_after: int | None = None  # drop the connection after this many body bytes, once

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def git_blob_id(self) -> str:
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()


@dataclass
class HubRepo:
    commit: str  # what `main` resolves to
    files: dict[str, HubFile] = field(default_factory=dict)
    token: str | None = None  # private: only this token may read it


@dataclass(frozen=True)
class Request:
    origin: str  # "hub" or "cdn"
    method: str
    path: str
    range: str | None
    authorization: str | None


@dataclass
class FakeHub:
    repos: dict[str, HubRepo] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    bucket: dict[str, HubFile] = field(default_factory=dict)  # other files on the storage host, by path
    url: str = ""
    cdn_url: str = ""

    def add(self, repo: str, path: str, data: bytes, lfs: bool, commit: str | None = None) -> HubFile:
        hosted = self.repos.setdefault(repo, HubRepo(commit or hashlib.sha1(repo.encode()).hexdigest()))
        hosted.files[path] = HubFile(data, lfs)
        return hosted.files[path]

    def lfs_file(self, sha256: str) -> HubFile | None:
        return next((f for r in self.repos.values() for f in r.files.values() if f.lfs and f.sha256 == sha256), None)

    def hub_requests(self, method: str | None = None) -> list[Request]:
        return [r for r in self.requests if r.origin == "hub" and method in (None, r.method)]

    def cdn_requests(self) -> list[Request]:
        return [r for r in self.requests if r.origin == "cdn"]


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    origin: str

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        path = urlsplit(self.path).path
        self.hub.requests.append(
            Request(self.origin, self.command, path, self.headers.get("Range"), self.headers.get("Authorization"))
        )
        if self.origin == "cdn":
            return self._storage(path, body)
        return self._resolve(path, body)

    def _resolve(self, path: str, body: bool) -> None:
        match = _RESOLVE.match(path)
        if match is None:
            return self._error(404, "EntryNotFound")
        repo = self.hub.repos.get(match["repo"])
        if repo is None or (repo.token is not None and self.headers.get("Authorization") != f"Bearer {repo.token}"):
            return self._error(401, "RepoNotFound")
        if match["revision"] not in ("main", repo.commit):
            return self._error(404, "RevisionNotFound")
        hosted = repo.files.get(unquote(match["path"]))
        if hosted is None:
            return self._error(404, "EntryNotFound", repo.commit)
        if hosted.lfs:
            self.send_response(302)
            self.send_header("Location", f"{self.hub.cdn_url}/{hosted.sha256}?X-Amz-Signature=fake")
            self.send_header("X-Repo-Commit", repo.commit)
            self.send_header("X-Linked-Size", str(len(hosted.data)))
            self.send_header("X-Linked-Etag", f'"{hosted.sha256}"')
            self.send_header("ETag", f'"{hosted.git_blob_id}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        return self._bytes(hosted, body, {"X-Repo-Commit": repo.commit, "ETag": f'"{hosted.git_blob_id}"'})

    def _storage(self, path: str, body: bool) -> None:
        if "Authorization" in self.headers:
            return self._error(400, None)  # a signed URL allows only one authentication mechanism
        hosted = self.hub.bucket.get(path) or self.hub.lfs_file(path.strip("/"))
        if hosted is None:
            return self._error(404, None)
        return self._bytes(hosted, body, {"ETag": f'"{hosted.sha256}"'})

    def _bytes(self, hosted: HubFile, body: bool, headers: dict[str, str]) -> None:
        data, start = hosted.data, 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match:
            start = int(match[1])
            if start >= len(data):
                return self._error(416, None)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        for name, value in headers.items():
            self.send_header(name, value)
        payload = data[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if not body:
            return None
        if hosted.cut_once_after is not None:
            self.wfile.write(payload[: hosted.cut_once_after])
            hosted.cut_once_after = None
            self.close_connection = True
        else:
            self.wfile.write(payload)
        return None

    def _error(self, status: int, code: str | None, commit: str | None = None) -> None:
        message = f'{{"error": "{code or status}"}}'.encode()
        self.send_response(status)
        if code is not None:
            self.send_header("X-Error-Code", code)
        if commit is not None:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(message)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(message)


@contextmanager
def serve_fake_hub() -> Iterator[FakeHub]:
    """The Hub and its storage host on two ports of 127.0.0.1 (two origins, as the real ones)."""
    hub = FakeHub()
    servers = {
        origin: ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Handler,), {"hub": hub, "origin": origin}))
        for origin in ("hub", "cdn")
    }
    threads = [threading.Thread(target=s.serve_forever, args=(0.05,), daemon=True) for s in servers.values()]
    for thread in threads:
        thread.start()
    hub.url = f"http://127.0.0.1:{servers['hub'].server_address[1]}"
    hub.cdn_url = f"http://127.0.0.1:{servers['cdn'].server_address[1]}"
    try:
        yield hub
    finally:
        for server in servers.values():
            server.shutdown()
            server.server_close()
        for thread in threads:
            thread.join()

"""Download the official MuseTalk weights into the layout musetalk.models.ModelPaths expects.

    python -m musetalk.download [--version v15|v1|all] [--models-dir models] [--endpoint URL]

Files come from the Hugging Face Hub (or a mirror given by --endpoint / HF_ENDPOINT) as
`{endpoint}/{repo}/resolve/main/{filename}`; v1's whisper tiny.pt comes from OpenAI's public bucket. Both versions
also get the BiSeNet face-parsing files (`face-parse-bisent/`) that avatar preparation uses for the blend mask.
Each file's size is learnt first with a HEAD request, complete files are skipped, partial ones are resumed from
`<file>.part` with a Range request, and a file is renamed into place only once its size (and sha256, where known)
is right. Standard library HTTP only.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from http.client import HTTPException, HTTPResponse
from pathlib import Path

from tqdm import tqdm

from musetalk.config import VERSIONS

DEFAULT_ENDPOINT = "https://huggingface.co"
WHISPER_TINY_URL = (
    "https://openaipublic.azureedge.net/main/whisper/models/"
    "65147644a518d12f04e32d6f3b26facc3f8dd46e5390956a9424a650c0ce22b9/tiny.pt"
)
WHISPER_URL_ENV = "MUSETALK_WHISPER_TINY_URL"
TIMEOUT_S = 60
CHUNK = 1 << 20
MAX_REDIRECTS = 5
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

# (Hub repo, file in the repo, destination under the models folder)
_MUSETALK = "TMElyralab/MuseTalk"
_VAE_FILES = [("stabilityai/sd-vae-ft-mse", f, f"sd-vae/{f}") for f in ("config.json", "diffusion_pytorch_model.bin")]
# BiSeNet face parsing for avatar preparation (both versions), from the Hub repo upstream's Windows script uses.
_PARSING_FILES = [("ManyOtherFunctions/face-parse-bisent", f, f"face-parse-bisent/{f}")
                  for f in ("79999_iter.pth", "resnet18-5c106cde.pth")]
_HUB_FILES = {
    "v1": [(_MUSETALK, f"musetalk/{f}", f"musetalk/{f}") for f in ("musetalk.json", "pytorch_model.bin")]
    + _VAE_FILES
    + _PARSING_FILES,
    "v15": [(_MUSETALK, f"musetalkV15/{f}", f"musetalkV15/{f}") for f in ("musetalk.json", "unet.pth")]
    + _VAE_FILES
    + _PARSING_FILES
    + [("openai/whisper-tiny", f, f"whisper/{f}")
       for f in ("config.json", "pytorch_model.bin", "preprocessor_config.json")],
}


class DownloadError(Exception):
    """A failure to report on one line, without a traceback."""


@dataclass(frozen=True)
class RemoteFile:
    url: str
    dest: Path
    sha256: str | None = None  # known in advance (the whisper bucket names files by their hash)


def sha256_from_url(url: str) -> str | None:
    """OpenAI's bucket puts the file's sha256 in the folder name: .../models/<sha256>/tiny.pt."""
    parts = urllib.parse.urlsplit(url).path.split("/")
    return parts[-2] if len(parts) >= 2 and _SHA256.match(parts[-2]) else None


def plan(version: str, models_dir: Path, endpoint: str, whisper_url: str = WHISPER_TINY_URL) -> list[RemoteFile]:
    """The files to fetch for `version` ("v1", "v15" or "all"), each once."""
    versions = list(VERSIONS) if version == "all" else [version]
    files: dict[Path, RemoteFile] = {}
    for v in versions:
        for repo, name, dest in _HUB_FILES[v]:
            url = f"{endpoint.rstrip('/')}/{repo}/resolve/main/{urllib.parse.quote(name)}"
            files.setdefault(models_dir / dest, RemoteFile(url, models_dir / dest))
        if v == "v1":
            dest = models_dir / "whisper" / "tiny.pt"
            files.setdefault(dest, RemoteFile(whisper_url, dest, sha256_from_url(whisper_url)))
    return list(files.values())


# ------------------------------------------------------------------------------------------------ HTTP

class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003 - urllib's signature
        return None  # the Hub's HEAD answers carry the size on the redirect itself


_head_opener = urllib.request.build_opener(_NoRedirect)
_get_opener = urllib.request.build_opener()

_HINTS = {401: "unauthorised: the repository is private/gated or does not exist",
          403: "forbidden", 404: "not found", 416: "requested range not satisfiable"}


def _open(
    opener: urllib.request.OpenerDirector, request: urllib.request.Request
) -> HTTPResponse | urllib.error.HTTPError:
    try:
        return opener.open(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if 300 <= e.code < 400 and request.get_method() == "HEAD":
            return e  # an HTTPError is also a response: status, headers
        raise DownloadError(f"HTTP {e.code} ({_HINTS.get(e.code, e.reason)}) for {request.full_url}") from None
    except urllib.error.URLError as e:
        raise DownloadError(f"cannot reach {request.full_url}: {e.reason}") from None
    except OSError as e:  # timeouts, resets
        raise DownloadError(f"cannot reach {request.full_url}: {e}") from None


@dataclass(frozen=True)
class RemoteInfo:
    size: int
    sha256: str | None


def remote_info(url: str) -> RemoteInfo:
    """Size (and sha256 for LFS files) the way the Hub answers HEAD: large files give a 302 to the CDN with
    X-Linked-Size / X-Linked-Etag; small files a 200 with Content-Length. Other redirects are followed."""
    for _ in range(MAX_REDIRECTS):
        with _open(_head_opener, urllib.request.Request(url, method="HEAD")) as response:
            headers, status = response.headers, response.status
        if 300 <= status < 400:
            linked = headers.get("X-Linked-Size")
            if linked is not None:
                etag = (headers.get("X-Linked-Etag") or "").strip('"').removeprefix("W/").strip('"').lower()
                return RemoteInfo(_int_header(linked, "X-Linked-Size", url), etag if _SHA256.match(etag) else None)
            location = headers.get("Location")
            if not location:
                raise DownloadError(f"HTTP {status} without a Location for {url}")
            url = urllib.parse.urljoin(url, location)
            continue
        length = headers.get("Content-Length")
        if length is None:
            raise DownloadError(f"the server did not say how large {url} is (no Content-Length)")
        return RemoteInfo(_int_header(length, "Content-Length", url), None)
    raise DownloadError(f"more than {MAX_REDIRECTS} redirects for {url}")


def _int_header(value: str, name: str, url: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DownloadError(f"bad {name} {value!r} for {url}") from None


# ------------------------------------------------------------------------------------------------ one file

def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _read(response: HTTPResponse, url: str) -> bytes:
    try:
        return response.read(CHUNK)
    except (OSError, HTTPException) as e:  # resets, timeouts, IncompleteRead
        raise DownloadError(f"connection lost while downloading {url} ({e!r}); run again to resume") from None


def _fetch_into(url: str, part: Path, size: int, label: str) -> None:
    """Append the rest of `url` to `part`, resuming from its current length."""
    offset = part.stat().st_size if part.exists() else 0
    if offset > size:  # left over from a different version of the file
        part.unlink()
        offset = 0
    if offset == size:
        return
    request = urllib.request.Request(url)
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    with _open(_get_opener, request) as response:
        if offset and response.status != 206:  # the server ignored the Range: start again
            offset = 0
        with part.open("ab" if offset else "wb") as out, tqdm(
            total=size, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=label, leave=True,
        ) as bar:
            while block := _read(response, url):
                out.write(block)
                bar.update(len(block))


def download_file(item: RemoteFile) -> bool:
    """Fetch one file unless already complete. Returns True if it downloaded something."""
    info = remote_info(item.url)
    sha256 = item.sha256 or info.sha256
    label = str(item.dest)
    if item.dest.is_file() and item.dest.stat().st_size == info.size:
        print(f"{label}: complete, skipped", file=sys.stderr)
        return False
    item.dest.parent.mkdir(parents=True, exist_ok=True)
    part = item.dest.with_name(item.dest.name + ".part")
    _fetch_into(item.url, part, info.size, label)
    got = part.stat().st_size
    if got != info.size:
        if got > info.size:
            part.unlink()
            raise DownloadError(f"{label}: received {got} bytes, expected {info.size}; the partial file was removed")
        raise DownloadError(f"{label}: received {got} of {info.size} bytes; run again to resume")
    if sha256 is not None and (actual := _sha256_of(part)) != sha256:
        part.unlink()
        raise DownloadError(f"{label}: sha256 {actual} does not match the expected {sha256}; removed")
    os.replace(part, item.dest)
    return True


# ------------------------------------------------------------------------------------------------ CLI

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m musetalk.download", description="Download the MuseTalk weights.")
    p.add_argument("--version", choices=[*VERSIONS, "all"], default="v15")
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--endpoint", default=None, help=f"Hub endpoint (default: $HF_ENDPOINT or {DEFAULT_ENDPOINT})")
    p.add_argument("--whisper-tiny-url", default=None,
                   help=f"where v1's openai-whisper tiny.pt comes from (default: ${WHISPER_URL_ENV} or OpenAI's)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    endpoint = args.endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    whisper_url = args.whisper_tiny_url or os.environ.get(WHISPER_URL_ENV) or WHISPER_TINY_URL
    try:
        for item in plan(args.version, args.models_dir, endpoint, whisper_url):
            download_file(item)
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # local disk: permissions, full disk
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; run again to resume", file=sys.stderr)
        return 130
    print(f"MuseTalk {args.version} weights are in {args.models_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

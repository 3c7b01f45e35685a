"""Download the official MuseTalk weights into the layout musetalk.models.ModelPaths expects.

    python -m musetalk.download [--version v15|v1|all] [--models_dir models] [--endpoint URL]

Hub files go through huggingface_hub (`hf_hub_download` into the models folder, at the commits pinned in
REVISIONS), so its settings apply: HF_TOKEN (a private or gated mirror), HF_ENDPOINT or --endpoint (a mirror),
HF_HUB_OFFLINE=1 (no network: only check what is on disk), Xet storage where hf-xet is installed. It shows progress,
resumes a download whose connection dropped (from the last whole 10 MB chunk, a few times), keeps a large file
already there whose sha256 is right, and sends no request at all for a file already complete at its pinned commit
(what it knows is kept in `.cache/huggingface/` beside the files). Both versions also get the BiSeNet face-parsing files
(`face-parse-bisent/`, from the Hub too) that avatar preparation uses for the blend mask.

v1's whisper `tiny.pt` is not on the Hub: it comes from OpenAI's public bucket, whose URL names its sha256; it is
resumed from `<file>.part` with a Range request and moved into place once its hash is right.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from http.client import HTTPException, HTTPResponse
from pathlib import Path

from huggingface_hub import hf_hub_download, is_offline_mode
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from tqdm import tqdm

from musetalk.cli import ArgumentParser
from musetalk.config import VERSIONS

DEFAULT_ENDPOINT = "https://huggingface.co"
WHISPER_TINY_URL = (
    "https://openaipublic.azureedge.net/main/whisper/models/"
    "65147644a518d12f04e32d6f3b26facc3f8dd46e5390956a9424a650c0ce22b9/tiny.pt"
)
WHISPER_URL_ENV = "MUSETALK_WHISPER_TINY_URL"
TIMEOUT_S = 60
CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

_MUSETALK = "TMElyralab/MuseTalk"
_VAE = "stabilityai/sd-vae-ft-mse"
_WHISPER = "openai/whisper-tiny"
_PARSING = "ManyOtherFunctions/face-parse-bisent"  # BiSeNet, the repository upstream's Windows script uses
# The commit of each repository the files are fetched at: the same bytes on every machine, whatever is pushed later.
REVISIONS = {
    _MUSETALK: "3ef28bc5cff08c90ad8178a25f1b570cd800170f",
    _VAE: "31f26fdeee1355a5c34592e401dd41e45d25a493",
    _WHISPER: "169d4a4341b33bc18d8881c4b69c2e104e1cc0af",
    _PARSING: "0073b233a5a3c4b1377d4dbf49245017938a72b5",
}


@dataclass(frozen=True)
class HubFile:
    repo: str
    name: str  # path in the repository
    folder: str  # where the repository's root goes, under the models folder ("" = the models folder)

    def dest(self, models_dir: Path) -> Path:
        return models_dir / self.folder / self.name


def _hub(repo: str, folder: str, *names: str) -> list[HubFile]:
    return [HubFile(repo, name, folder) for name in names]


_COMMON = _hub(_VAE, "sd-vae", "config.json", "diffusion_pytorch_model.bin") + _hub(
    _PARSING, "face-parse-bisent", "79999_iter.pth", "resnet18-5c106cde.pth"
)
HUB_FILES = {
    "v1": _hub(_MUSETALK, "", "musetalk/musetalk.json", "musetalk/pytorch_model.bin") + _COMMON,
    "v15": _hub(_MUSETALK, "", "musetalkV15/musetalk.json", "musetalkV15/unet.pth")
    + _COMMON
    + _hub(_WHISPER, "whisper", "config.json", "pytorch_model.bin", "preprocessor_config.json"),
}


class DownloadError(Exception):
    """A failure to report on one line, without a traceback."""


@dataclass(frozen=True)
class Plan:
    hub: list[HubFile]
    whisper_tiny: Path | None  # v1's tiny.pt destination, when the version needs it


def plan(version: str, models_dir: Path) -> Plan:
    """The files to fetch for `version` ("v1", "v15" or "all"), each once."""
    versions = list(VERSIONS) if version == "all" else [version]
    hub = list(dict.fromkeys(f for v in versions for f in HUB_FILES[v]))
    return Plan(hub, models_dir / "whisper" / "tiny.pt" if "v1" in versions else None)


# ------------------------------------------------------------------------------------------------ Hub files


def _why(error: Exception, endpoint: str) -> str:
    """What went wrong, in words, for one of huggingface_hub's errors."""
    if isinstance(error, (LocalEntryNotFoundError, OfflineModeIsEnabled)):  # not on disk, and no answer from the Hub
        if is_offline_mode():
            return "not on disk, and HF_HUB_OFFLINE forbids downloading it"
        return f"cannot reach {endpoint}: {error.__cause__ or error}"
    if isinstance(error, RepositoryNotFoundError):  # also gated repositories
        return "unauthorised: the repository is private, gated or absent (set HF_TOKEN for a private mirror)"
    if isinstance(error, RevisionNotFoundError):
        return "the pinned revision is not in the repository"
    if isinstance(error, EntryNotFoundError):
        return "not found in the repository"
    status = error.response.status_code if isinstance(error, HfHubHTTPError) and error.response is not None else "?"
    return f"HTTP {status} from {endpoint}"


def fetch_hub_file(item: HubFile, models_dir: Path, endpoint: str) -> None:
    revision = REVISIONS[item.repo]
    try:
        hf_hub_download(item.repo, item.name, revision=revision, local_dir=models_dir / item.folder, endpoint=endpoint)
    except (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        raise DownloadError(f"{item.repo}/{item.name} at {revision[:12]}: {_why(e, endpoint)}") from None


# ------------------------------------------------------------------------------------------------ tiny.pt


def sha256_from_url(url: str) -> str | None:
    """OpenAI's bucket puts the file's sha256 in the folder name: .../models/<sha256>/tiny.pt."""
    parts = urllib.parse.urlsplit(url).path.split("/")
    return parts[-2] if len(parts) >= 2 and _SHA256.match(parts[-2]) else None


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _open(request: urllib.request.Request) -> HTTPResponse:
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        raise DownloadError(f"HTTP {e.code} ({e.reason}) for {request.full_url}") from None
    except urllib.error.URLError as e:
        raise DownloadError(f"cannot reach {request.full_url}: {e.reason}") from None
    except OSError as e:  # timeouts, resets
        raise DownloadError(f"cannot reach {request.full_url}: {e}") from None


def _append_rest(url: str, part: Path, label: str) -> None:
    """Append the rest of `url` to `part`, resuming from its current length (from scratch if the server ignores
    the Range)."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = _open(request)
    except DownloadError:
        if not offset:
            raise
        part.unlink()  # e.g. 416: the part is not a prefix of this file; start again
        response = _open(urllib.request.Request(url))
        offset = 0
    with response:
        if response.status != 206:
            offset = 0
        total = offset + int(response.headers.get("Content-Length") or 0) or None
        with (
            part.open("ab" if offset else "wb") as out,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=label,
                leave=True,
            ) as bar,
        ):
            try:
                while block := response.read(CHUNK):
                    out.write(block)
                    bar.update(len(block))
            except (OSError, HTTPException) as e:  # resets, timeouts, IncompleteRead
                raise DownloadError(f"connection lost while downloading {url} ({e!r}); run again to resume") from None


def fetch_checked_file(url: str, dest: Path) -> None:
    """A file whose sha256 its URL names: skipped when complete, resumed from `<dest>.part`, checked, moved in."""
    sha256 = sha256_from_url(url)
    if sha256 is None:
        raise DownloadError(f"{url} does not name the file's sha256 (.../<sha256>/{dest.name})")
    if dest.is_file() and _sha256_of(dest) == sha256:
        print(f"{dest}: complete, skipped", file=sys.stderr)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _append_rest(url, part, str(dest))
    if (actual := _sha256_of(part)) != sha256:
        part.unlink()
        raise DownloadError(f"{dest}: sha256 {actual} does not match the expected {sha256}; removed")
    os.replace(part, dest)


# ------------------------------------------------------------------------------------------------ CLI


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m musetalk.download", description="Download the MuseTalk weights.")
    p.add_argument("--version", choices=[*VERSIONS, "all"], default="v15")
    p.add_argument("--models_dir", type=Path, default=Path("models"))
    p.add_argument("--endpoint", default=None, help=f"Hub endpoint (default: $HF_ENDPOINT or {DEFAULT_ENDPOINT})")
    p.add_argument(
        "--whisper_tiny_url",
        default=None,
        help=f"where v1's openai-whisper tiny.pt comes from (default: ${WHISPER_URL_ENV} or OpenAI's)",
    )
    return p


def download(version: str, models_dir: Path, endpoint: str, whisper_url: str) -> None:
    """Every file `version` needs; DownloadError names the file that failed and those still missing."""
    todo = plan(version, models_dir)
    jobs: list[tuple[Path, Callable[[], object]]] = [
        (f.dest(models_dir), partial(fetch_hub_file, f, models_dir, endpoint)) for f in todo.hub
    ]
    if todo.whisper_tiny is not None:
        jobs.append((todo.whisper_tiny, partial(fetch_checked_file, whisper_url, todo.whisper_tiny)))
    for _, job in jobs:
        try:
            job()
        except DownloadError as e:
            missing = [str(d) for d, _ in jobs if not d.is_file()]
            raise DownloadError(f"{e}; missing: {', '.join(missing)}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    endpoint = (args.endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    whisper_url = args.whisper_tiny_url or os.environ.get(WHISPER_URL_ENV) or WHISPER_TINY_URL
    try:
        download(args.version, args.models_dir, endpoint, whisper_url)
    except (DownloadError, OSError) as e:  # OSError: the local disk (permissions, full disk)
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; run again to resume", file=sys.stderr)
        return 130
    print(f"MuseTalk {args.version} weights are in {args.models_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

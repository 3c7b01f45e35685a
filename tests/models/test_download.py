"""The weight downloader (musetalk/download.py) against a local server that answers like the Hub."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from musetalk.download import WHISPER_URL_ENV, main
from testing.fake_services import free_port

ROOT = Path(__file__).resolve().parents[2]

# The Hub files each version needs: URL path -> destination under the models folder, and whether it is LFS.
V15 = {
    "/TMElyralab/MuseTalk/resolve/main/musetalkV15/musetalk.json": ("musetalkV15/musetalk.json", False),
    "/TMElyralab/MuseTalk/resolve/main/musetalkV15/unet.pth": ("musetalkV15/unet.pth", True),
    "/stabilityai/sd-vae-ft-mse/resolve/main/config.json": ("sd-vae/config.json", False),
    "/stabilityai/sd-vae-ft-mse/resolve/main/diffusion_pytorch_model.bin": ("sd-vae/diffusion_pytorch_model.bin", True),
    "/openai/whisper-tiny/resolve/main/config.json": ("whisper/config.json", False),
    "/openai/whisper-tiny/resolve/main/pytorch_model.bin": ("whisper/pytorch_model.bin", True),
    "/openai/whisper-tiny/resolve/main/preprocessor_config.json": ("whisper/preprocessor_config.json", False),
}
# BiSeNet face parsing (avatar preparation), fetched for either version.
PARSING = {f"/ManyOtherFunctions/face-parse-bisent/resolve/main/{f}": (f"face-parse-bisent/{f}", True)
           for f in ("79999_iter.pth", "resnet18-5c106cde.pth")}
V15.update(PARSING)
V1 = {
    "/TMElyralab/MuseTalk/resolve/main/musetalk/musetalk.json": ("musetalk/musetalk.json", False),
    "/TMElyralab/MuseTalk/resolve/main/musetalk/pytorch_model.bin": ("musetalk/pytorch_model.bin", True),
    "/stabilityai/sd-vae-ft-mse/resolve/main/config.json": ("sd-vae/config.json", False),
    "/stabilityai/sd-vae-ft-mse/resolve/main/diffusion_pytorch_model.bin": ("sd-vae/diffusion_pytorch_model.bin", True),
    **PARSING,
}
TINY_PT = os.urandom(300_000)
TINY_PT_PATH = f"/main/whisper/models/{hashlib.sha256(TINY_PT).hexdigest()}/tiny.pt"


def host(fake_hub, files: dict[str, tuple[str, bool]]) -> dict[str, bytes]:
    """Serve a distinct random payload per file; returns destination -> bytes."""
    expected = {}
    for i, (path, (dest, lfs)) in enumerate(files.items()):
        data = os.urandom(2_500_000 + i) if lfs else f'{{"file": {i}}}'.encode()
        fake_hub.add(path, data, lfs)
        expected[dest] = data
    return expected


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "musetalk.download", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def assert_tree(root: Path, expected: dict[str, bytes]) -> None:
    for dest, data in expected.items():
        assert (root / dest).read_bytes() == data, dest
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == sorted(expected)


def test_full_download_v15(fake_hub, tmp_path):
    expected = host(fake_hub, V15)
    assert main(["--version", "v15", "--models-dir", str(tmp_path), "--endpoint", fake_hub.url]) == 0
    assert_tree(tmp_path, expected)
    heads = [path for method, path, _ in fake_hub.requests if method == "HEAD"]
    assert sorted(heads) == sorted(V15)  # HEAD is not redirected to the CDN
    cdn_gets = [path for method, path, _ in fake_hub.requests if method == "GET" and path.startswith("/cdn/")]
    assert len(cdn_gets) == 5  # GET follows the LFS redirects


def test_v1_from_hf_endpoint_env_with_whisper_hash_check(fake_hub, tmp_path, monkeypatch):
    expected = host(fake_hub, V1)
    fake_hub.add(TINY_PT_PATH, TINY_PT, lfs=False)
    expected["whisper/tiny.pt"] = TINY_PT
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    monkeypatch.setenv(WHISPER_URL_ENV, fake_hub.url + TINY_PT_PATH)
    assert main(["--version", "v1", "--models-dir", str(tmp_path)]) == 0
    assert_tree(tmp_path, expected)


def test_whisper_hash_mismatch_removes_the_file(fake_hub, tmp_path, capsys):
    host(fake_hub, V1)
    wrong = "/main/whisper/models/" + "0" * 64 + "/tiny.pt"
    fake_hub.add(wrong, TINY_PT, lfs=False)
    rc = main(["--version", "v1", "--models-dir", str(tmp_path), "--endpoint", fake_hub.url,
               "--whisper-tiny-url", fake_hub.url + wrong])
    assert rc == 1
    assert "sha256" in capsys.readouterr().err
    assert not (tmp_path / "whisper/tiny.pt").exists() and not (tmp_path / "whisper/tiny.pt.part").exists()


def test_complete_files_are_skipped(fake_hub, tmp_path):
    expected = host(fake_hub, V15)
    args = ["--models-dir", str(tmp_path), "--endpoint", fake_hub.url]
    assert main(args) == 0
    fake_hub.requests.clear()
    assert main(args) == 0
    assert {method for method, _, _ in fake_hub.requests} == {"HEAD"}
    assert_tree(tmp_path, expected)


def test_partial_file_is_resumed_with_a_range_request(fake_hub, tmp_path):
    expected = host(fake_hub, V15)
    unet = expected["musetalkV15/unet.pth"]
    part = tmp_path / "musetalkV15" / "unet.pth.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(unet[:1_000_000])
    assert main(["--models-dir", str(tmp_path), "--endpoint", fake_hub.url]) == 0
    assert_tree(tmp_path, expected)
    ranges = [r for method, path, r in fake_hub.requests if method == "GET" and r]
    assert ranges == ["bytes=1000000-", "bytes=1000000-"]  # sent to the Hub URL, kept across the redirect


def test_a_dropped_connection_keeps_the_part_and_the_next_run_resumes(fake_hub, tmp_path, capsys):
    expected = host(fake_hub, V15)
    fake_hub.files["/openai/whisper-tiny/resolve/main/pytorch_model.bin"].cut_once_after = 700_000
    args = ["--models-dir", str(tmp_path), "--endpoint", fake_hub.url]
    assert main(args) == 1
    assert "received 700000 of 2500005 bytes; run again to resume" in capsys.readouterr().err
    assert (tmp_path / "whisper/pytorch_model.bin.part").stat().st_size == 700_000
    assert not (tmp_path / "whisper/pytorch_model.bin").exists()
    fake_hub.requests.clear()
    assert main(args) == 0
    assert_tree(tmp_path, expected)
    assert [r for method, _, r in fake_hub.requests if method == "GET"] == ["bytes=700000-"] * 2 + [None]


@pytest.mark.parametrize("claimed,message", [(3_000_000, "received 2500001 of 3000000 bytes; run again"),
                                             (2_000_000, "received 2500001 bytes, expected 2000000")])
def test_size_mismatch_is_an_error(fake_hub, tmp_path, capsys, claimed, message):
    host(fake_hub, V15)
    fake_hub.files["/TMElyralab/MuseTalk/resolve/main/musetalkV15/unet.pth"].claimed_size = claimed
    assert main(["--models-dir", str(tmp_path), "--endpoint", fake_hub.url]) == 1
    err = capsys.readouterr().err
    assert message in err
    assert not (tmp_path / "musetalkV15/unet.pth").exists()


def test_404_is_one_line_without_traceback(fake_hub, tmp_path):
    host(fake_hub, V15)
    del fake_hub.files["/openai/whisper-tiny/resolve/main/preprocessor_config.json"]
    result = run_cli("--models-dir", str(tmp_path), env={"HF_ENDPOINT": fake_hub.url})
    assert result.returncode == 1
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error_lines == [f"error: HTTP 404 (not found) for {fake_hub.url}"
                           "/openai/whisper-tiny/resolve/main/preprocessor_config.json"]
    assert "Traceback" not in result.stderr


def test_connection_refused_is_one_line(tmp_path):
    port = free_port()
    result = run_cli("--models-dir", str(tmp_path), "--endpoint", f"http://127.0.0.1:{port}")
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot reach http://127.0.0.1:{port}/")
    assert "refused" in result.stderr.lower()
    assert len(result.stderr.strip().splitlines()) == 1


def test_all_fetches_both_versions_once(fake_hub, tmp_path):
    expected = host(fake_hub, {**V15, **V1})
    fake_hub.add(TINY_PT_PATH, TINY_PT, lfs=False)
    expected["whisper/tiny.pt"] = TINY_PT
    assert main(["--version", "all", "--models-dir", str(tmp_path), "--endpoint", fake_hub.url,
                 "--whisper-tiny-url", fake_hub.url + TINY_PT_PATH]) == 0
    assert_tree(tmp_path, expected)
    heads = [path for method, path, _ in fake_hub.requests if method == "HEAD"]
    assert len(heads) == len(set(heads))

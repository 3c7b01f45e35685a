"""The weight downloader (musetalk/download.py, through huggingface_hub) against a local server that answers like
the Hub (testing.fake_hub: the Hub and its storage host on two origins)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE

from musetalk.download import HUB_FILES, REVISIONS, WHISPER_URL_ENV, main
from testing.fake_hub import FakeHub, HubFile

ROOT = Path(__file__).resolve().parents[2]
TINY_PT = os.urandom(300_000)
TINY_PT_PATH = f"/main/whisper/models/{hashlib.sha256(TINY_PT).hexdigest()}/tiny.pt"
LFS_SUFFIXES = (".bin", ".pth")


def host(hub: FakeHub, version: str, token: str | None = None) -> dict[str, bytes]:
    """Put `version`'s files on the fake Hub, each repository at its pinned commit, a distinct payload per file
    (large ones stored as LFS); returns destination under the models folder -> bytes."""
    expected = {}
    for i, f in enumerate(HUB_FILES[version]):
        lfs = f.name.endswith(LFS_SUFFIXES)
        data = os.urandom(2_500_000 + i) if lfs else f'{{"file": "{f.name}"}}'.encode()
        hub.add(f.repo, f.name, data, lfs, commit=REVISIONS[f.repo])
        hub.repos[f.repo].token = token
        expected[f.dest(Path()).as_posix()] = data
    return expected


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "musetalk.download", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def files_in(root: Path) -> dict[str, bytes]:
    """The weights under root (huggingface_hub's bookkeeping in .cache/ left out)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(root).parts
    }


def test_v15_lands_in_the_official_layout_at_the_pinned_commits(fake_hub, tmp_path):
    expected = host(fake_hub, "v15")
    assert main(["--version", "v15", "--models_dir", str(tmp_path), "--endpoint", fake_hub.url]) == 0
    assert files_in(tmp_path) == expected
    heads = [r.path for r in fake_hub.hub_requests("HEAD")]
    assert sorted(heads) == sorted(f"/{f.repo}/resolve/{REVISIONS[f.repo]}/{f.name}" for f in HUB_FILES["v15"])
    lfs_count = sum(f.name.endswith(LFS_SUFFIXES) for f in HUB_FILES["v15"])
    assert len([r for r in fake_hub.cdn_requests() if r.method == "GET"]) == lfs_count  # large files from storage


def test_token_goes_to_the_hub_and_never_to_the_storage_host(fake_hub, tmp_path, monkeypatch):
    expected = host(fake_hub, "v15", token="hf_local_test_token")
    monkeypatch.setenv("HF_TOKEN", "hf_local_test_token")
    assert main(["--models_dir", str(tmp_path), "--endpoint", fake_hub.url]) == 0
    assert files_in(tmp_path) == expected
    assert {r.authorization for r in fake_hub.hub_requests()} == {"Bearer hf_local_test_token"}
    assert {r.authorization for r in fake_hub.cdn_requests()} == {None}  # the storage host refuses it (400)


def test_a_private_repository_without_a_token_is_one_clear_line(fake_hub, tmp_path, capsys, monkeypatch):
    host(fake_hub, "v15", token="hf_local_test_token")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no token saved by `hf auth login` either
    assert main(["--models_dir", str(tmp_path / "m"), "--endpoint", fake_hub.url]) == 1
    err = capsys.readouterr().err
    assert "error: TMElyralab/MuseTalk/musetalkV15/musetalk.json at 3ef28bc5cff0: unauthorised" in err
    assert "HF_TOKEN" in err and f"missing: {tmp_path / 'm' / 'musetalkV15/musetalk.json'}" in err


def test_complete_files_cost_no_request(fake_hub, tmp_path):
    expected = host(fake_hub, "v15")
    args = ["--models_dir", str(tmp_path), "--endpoint", fake_hub.url]
    assert main(args) == 0
    fake_hub.requests.clear()
    assert main(args) == 0
    assert fake_hub.requests == []  # the pinned commit is recorded beside each file
    assert files_in(tmp_path) == expected


def test_files_already_there_are_checked_not_fetched_again(fake_hub, tmp_path):
    """Weights copied in by hand (no huggingface_hub bookkeeping): large files whose sha256 matches are kept."""
    expected = host(fake_hub, "v15")
    for dest, data in expected.items():
        (tmp_path / dest).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / dest).write_bytes(data)
    assert main(["--models_dir", str(tmp_path), "--endpoint", fake_hub.url]) == 0
    assert fake_hub.cdn_requests() == []
    assert files_in(tmp_path) == expected


def test_offline_mode_sends_no_request(fake_hub, tmp_path):
    expected = host(fake_hub, "v15")
    env = {"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": fake_hub.url}
    refused = run_cli("--models_dir", str(tmp_path), env=env)
    assert refused.returncode == 1
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "HF_HUB_OFFLINE forbids downloading it" in errors[0]
    assert "missing: " in errors[0] and "Traceback" not in refused.stderr
    assert fake_hub.requests == []
    assert main(["--models_dir", str(tmp_path), "--endpoint", fake_hub.url]) == 0
    fake_hub.requests.clear()
    done = run_cli("--models_dir", str(tmp_path), env=env)  # offline with everything on disk: fine
    assert done.returncode == 0, done.stderr
    assert fake_hub.requests == [] and files_in(tmp_path) == expected


def test_a_dropped_connection_is_resumed_with_a_range_request(fake_hub, tmp_path):
    """huggingface_hub writes what it received in whole chunks (DOWNLOAD_CHUNK_SIZE) and asks for the rest."""
    expected = host(fake_hub, "v15")
    big = os.urandom(DOWNLOAD_CHUNK_SIZE + 1_500_000)
    hosted = fake_hub.add("openai/whisper-tiny", "pytorch_model.bin", big, lfs=True)
    hosted.cut_once_after = DOWNLOAD_CHUNK_SIZE + 700_000
    expected["whisper/pytorch_model.bin"] = big
    assert main(["--models_dir", str(tmp_path), "--endpoint", fake_hub.url]) == 0
    assert files_in(tmp_path) == expected
    assert [r.range for r in fake_hub.cdn_requests() if r.range] == [f"bytes={DOWNLOAD_CHUNK_SIZE}-"]


def test_a_missing_file_is_one_line_naming_what_is_missing(fake_hub, tmp_path):
    host(fake_hub, "v15")
    del fake_hub.repos["openai/whisper-tiny"].files["preprocessor_config.json"]
    result = run_cli("--models-dir", str(tmp_path), env={"HF_ENDPOINT": fake_hub.url})  # the hyphen spelling too
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: openai/whisper-tiny/preprocessor_config.json at 169d4a4341b3: not found in the "
        f"repository; missing: {tmp_path / 'whisper/preprocessor_config.json'}"
    ]
    assert "Traceback" not in result.stderr


def test_an_unknown_pinned_revision_is_named(fake_hub, tmp_path, capsys):
    host(fake_hub, "v15")
    fake_hub.repos["stabilityai/sd-vae-ft-mse"].commit = "0" * 40
    assert main(["--models_dir", str(tmp_path), "--endpoint", fake_hub.url]) == 1
    assert (
        "stabilityai/sd-vae-ft-mse/config.json at 31f26fdeee13: the pinned revision is not in the repository"
        in capsys.readouterr().err
    )


def test_v1_with_whisper_tiny_from_its_bucket_checked_by_hash(fake_hub, tmp_path, monkeypatch):
    expected = host(fake_hub, "v1")
    fake_hub.bucket[TINY_PT_PATH] = HubFile(TINY_PT, lfs=False)
    monkeypatch.setenv(WHISPER_URL_ENV, fake_hub.cdn_url + TINY_PT_PATH)
    assert main(["--version", "v1", "--models_dir", str(tmp_path), "--endpoint", fake_hub.url]) == 0
    assert files_in(tmp_path) == {**expected, "whisper/tiny.pt": TINY_PT}


def test_whisper_tiny_with_a_wrong_hash_is_removed(fake_hub, tmp_path, capsys):
    host(fake_hub, "v1")
    wrong = "/main/whisper/models/" + "0" * 64 + "/tiny.pt"
    fake_hub.bucket[wrong] = HubFile(TINY_PT, lfs=False)
    assert (
        main(
            [
                "--version",
                "v1",
                "--models_dir",
                str(tmp_path),
                "--endpoint",
                fake_hub.url,
                "--whisper_tiny_url",
                fake_hub.cdn_url + wrong,
            ]
        )
        == 1
    )
    assert "sha256" in capsys.readouterr().err
    assert not (tmp_path / "whisper/tiny.pt").exists() and not (tmp_path / "whisper/tiny.pt.part").exists()


def test_all_fetches_both_versions_each_file_once(fake_hub, tmp_path):
    expected = {**host(fake_hub, "v15"), **host(fake_hub, "v1")}
    fake_hub.bucket[TINY_PT_PATH] = HubFile(TINY_PT, lfs=False)
    assert (
        main(
            [
                "--version",
                "all",
                "--models_dir",
                str(tmp_path),
                "--endpoint",
                fake_hub.url,
                "--whisper_tiny_url",
                fake_hub.cdn_url + TINY_PT_PATH,
            ]
        )
        == 0
    )
    assert files_in(tmp_path) == {**expected, "whisper/tiny.pt": TINY_PT}
    heads = [r.path for r in fake_hub.hub_requests("HEAD")]
    assert len(heads) == len(set(heads))

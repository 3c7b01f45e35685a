"""The demo page in headless Chromium, for the tests in tests/web/: app.py in a subprocess on a free loopback port,
Chromium's flags for loopback WebRTC, and the page's own stats (`window.avatarClient.stats()`) polled until a
condition holds. Chromium itself comes from the `chromium` fixture (tests/conftest.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testing.fake_services import free_port

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    # Inside a loopback-only namespace: allow 127.0.0.1 candidates, and offer raw IPs instead of mDNS names
    # (without multicast, gathering of mDNS candidates never completes).
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return json.loads(resp.read())


@contextlib.contextmanager
def running_server(tmp_path: Path, *extra: str, timeout: float = 45.0) -> Iterator[str]:
    """app.py (lite engine, one session at most, an LLM URL where nothing listens) in a subprocess on a free
    loopback port; yields its base URL once /healthz answers."""
    port, no_llm_port = free_port(), free_port()
    log_path = tmp_path / "server.log"
    cmd = [
        sys.executable,
        "app.py",
        "--listenport",
        str(port),
        "--host",
        "127.0.0.1",
        "--ice_host",
        "127.0.0.1",
        "--engine",
        "lite",
        "--max_session",
        "1",
        "--avatars_dir",
        str(ROOT / "avatars"),
        "--records_dir",
        str(tmp_path / "records"),
        "--llm_base_url",
        f"http://127.0.0.1:{no_llm_port}/v1",
        *extra,
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"app.py exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                if get_json(f"{base}/healthz").get("ok"):
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"app.py did not answer /healthz within {timeout} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # a clean shutdown closes sessions and joins worker threads
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def session_count(base: str) -> int:
    sessions = get_json(f"{base}/healthz")["sessions"]
    return sessions if isinstance(sessions, int) else len(sessions)


def stats(page: Any) -> dict:  # a playwright Page
    return page.evaluate("window.avatarClient.stats()")


def wait_until(page: Any, predicate: Callable[[dict], bool], timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        s = stats(page)
        if predicate(s):
            return s
        if time.monotonic() > deadline:
            errors = page.locator("#errors").inner_text()
            pytest.fail(f"timed out waiting for {what}; last stats {s}; page errors: {errors!r}")
        page.wait_for_timeout(100)

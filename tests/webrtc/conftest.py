from __future__ import annotations

import os

import pytest

from musetalk.avatar import Avatar, ensure_demo, load_avatar
from testing.rtc import NETNS_HINT, in_loopback_namespace
from server.webrtc import use_host_addresses


@pytest.fixture(autouse=True)
def loopback_only() -> None:
    """WebRTC tests run only where no packet can leave 127.0.0.1; in CI their absence is a failure."""
    if not in_loopback_namespace():
        if os.environ.get("CI"):
            pytest.fail(NETNS_HINT)
        pytest.skip(NETNS_HINT)
    use_host_addresses(["127.0.0.1"])


@pytest.fixture(scope="session")
def demo_avatar(tmp_path_factory: pytest.TempPathFactory) -> Avatar:
    root = tmp_path_factory.mktemp("avatars")
    ensure_demo(root, progress=False, models_dir=root / "no-models")
    return load_avatar("demo", root)

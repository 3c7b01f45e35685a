from __future__ import annotations

import os

import pytest

from testing.rtc import NETNS_HINT, in_loopback_namespace


@pytest.fixture(autouse=True)
def loopback_only() -> None:
    """Browser tests run only where no packet can leave 127.0.0.1; in CI their absence is a failure."""
    if not in_loopback_namespace():
        if os.environ.get("CI"):
            pytest.fail(NETNS_HINT)
        pytest.skip(NETNS_HINT)

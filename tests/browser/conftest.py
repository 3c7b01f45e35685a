from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from testing.rtc import NETNS_HINT, in_loopback_namespace

CHROMIUM = Path("/usr/bin/chromium")


def _unavailable(reason: str) -> None:
    """Skip on a developer machine; in CI a browser test that cannot run is a failure."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def loopback_only() -> None:
    """Browser tests run only where no packet can leave 127.0.0.1."""
    if not in_loopback_namespace():
        _unavailable(NETNS_HINT)


@pytest.fixture
def chromium() -> Path:
    """Debian's Chromium, driven by the playwright package (its own browser downloads are never used)."""
    if importlib.util.find_spec("playwright") is None:
        _unavailable("the playwright package is missing: .venv/bin/pip install -c constraints-cpu.txt playwright==1.65.2")
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing: apt-get update && apt-get install -y chromium")
    return CHROMIUM
